//! `kiln:role/types`: shared types only, no functions to serve.
use wasmtime::component::HasSelf;

use super::RunState;
use crate::plugin::wit::latest::kiln::role::types;

impl types::Host for RunState {}

/// Link the `types` interface.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<RunState>) -> wasmtime::Result<()> {
    types::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)
}
