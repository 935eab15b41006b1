//! The sandbox images and Docker client the end-to-end tests share: built
//! once per test process from `sandbox-images/` (no registry needed).
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::Path;

use kiln::sandbox::image::{BASE, ImageBuilder, PROXY};
use tokio::sync::OnceCell;

static IMAGES: OnceCell<(String, String)> = OnceCell::const_new();

/// Tags of the base and proxy images, building them if missing.
pub async fn images() -> (String, String) {
    IMAGES
        .get_or_init(|| async {
            let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images");
            let builder = ImageBuilder::new(docker().await, recipes);
            let quiet = |_| {};
            let base = builder
                .ensure(BASE, &quiet)
                .await
                .expect("the base image should build (run scripts/setup-sandbox.sh first)");
            let proxy = builder
                .ensure(PROXY, &quiet)
                .await
                .expect("the proxy image should build");
            (base, proxy)
        })
        .await
        .clone()
}

/// A client for the local Docker engine.
pub async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine should answer")
}
