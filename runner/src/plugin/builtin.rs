//! Plugins built from this repository by the build script: the role plugins
//! shipped inside the `kiln` binary, and the paths of the test plugins.
include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// The component bytes of the built-in role plugin `name`, if there is one.
pub fn role_plugin(name: &str) -> Option<&'static [u8]> {
    ROLE_PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

/// The path of the test plugin `name` built from `tests/plugins/`.
pub fn test_plugin_path(name: &str) -> Option<&'static str> {
    TEST_PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}
