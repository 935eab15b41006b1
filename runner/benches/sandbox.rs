//! Sandbox-ready latency against raw Docker, measured in the same run.
//!
//! "Ready" = workspace checked out from the host mirror of a small repo +
//! container created and started with the full hardening (image present).
//! The baseline is `docker run --rm IMAGE true` of the same image through
//! the docker CLI. Samples are interleaved so machine noise hits both alike;
//! medians are compared. Run with:
//!
//! ```text
//! cargo bench -p kiln --bench sandbox            # KILN_BENCH_ITERS=20 by default
//! ```

mod common;
use common::{median, ms};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln::config::Role;
use kiln::sandbox::docker::DockerBackend;
use kiln::sandbox::image::{BASE, ImageBuilder, PROXY};
use kiln::sandbox::workspace::{RepoMirror, Workspace};
use kiln::sandbox::{EgressPolicy, SandboxBackend as _, SandboxSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iters = common::iterations(20);
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images");
    let image = ImageBuilder::new(docker.clone(), recipes)
        .ensure(BASE, &|_| {})
        .await?;
    let backend = DockerBackend::new(docker, "bench")?;
    backend.remove_orphans().await?;

    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    for i in 0..20 {
        std::fs::write(
            src.join(format!("file{i}.txt")),
            format!("content {i}\n").repeat(50),
        )?;
    }
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-q",
            "-m",
            "init",
        ],
    ] {
        anyhow::ensure!(
            Command::new("git")
                .arg("-C")
                .arg(&src)
                .args(args)
                .status()?
                .success(),
            "git {args:?}"
        );
    }
    let mirror = RepoMirror::sync(&dir.path().join("mirrors"), &src.to_string_lossy()).await?;

    let proxy = ImageBuilder::new(
        backend.docker().clone(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images"),
    )
    .ensure(PROXY, &|_| {})
    .await?;
    let backend = backend.with_proxy_image(proxy);
    let (mut raw, mut kiln) = (Vec::new(), Vec::new());
    let (mut checkout, mut egress) = (Vec::new(), Vec::new());
    for i in 0..iters + 2 {
        let t = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", &image, "true"])
            .status()?;
        anyhow::ensure!(status.success(), "docker run failed: {status}");
        let raw_t = t.elapsed();

        let t = Instant::now();
        let ws = Workspace::create(&mirror, "main", "kiln/bench", None).await?;
        let checkout_t = t.elapsed();
        let spec = SandboxSpec::new(
            format!("bench-{i}"),
            Role::Implementation,
            &image,
            ws.path(),
        );
        let sandbox = backend.create(spec).await?;
        let kiln_t = t.elapsed();
        backend.destroy(sandbox).await?;

        // Informational: a sandbox that starts in the setup phase with an
        // egress allowlist (two networks and the proxy container on top).
        let t = Instant::now();
        let mut spec = SandboxSpec::new(
            format!("bench-e{i}"),
            Role::Implementation,
            &image,
            ws.path(),
        );
        spec.egress = Some(EgressPolicy::new(vec!["example.org".into()]));
        let sandbox = backend.create(spec).await?;
        let egress_t = t.elapsed();
        backend.destroy(sandbox).await?;
        drop(ws);
        // The first two rounds warm caches (image layers, git, the client pool).
        if i >= 2 {
            raw.push(raw_t);
            kiln.push(kiln_t);
            checkout.push(checkout_t);
            egress.push(egress_t);
        }
    }
    let (raw_m, kiln_m) = (median(&mut raw), median(&mut kiln));
    println!("image: {image}, iterations: {iters}");
    println!(
        "raw `docker run --rm IMAGE true`: median {:.1} ms (min {:.1}, max {:.1})",
        ms(raw_m),
        ms(raw[0]),
        ms(raw[raw.len() - 1])
    );
    println!(
        "kiln sandbox ready (checkout + create + start): median {:.1} ms (min {:.1}, max {:.1})",
        ms(kiln_m),
        ms(kiln[0]),
        ms(kiln[kiln.len() - 1])
    );
    println!(
        "  of which workspace checkout: median {:.1} ms",
        ms(median(&mut checkout))
    );
    println!(
        "kiln sandbox ready with egress proxy (setup phase): median {:.1} ms",
        ms(median(&mut egress))
    );
    println!(
        "ratio kiln/raw: {:.2}x (target <= 1.25x)",
        kiln_m.as_secs_f64() / raw_m.as_secs_f64()
    );
    Ok(())
}
