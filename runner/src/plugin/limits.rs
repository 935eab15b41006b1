//! Resource limits for one plugin run, and the limiter that enforces the
//! memory part inside wasmtime.
//!
//! The threats: a plugin that loops forever (CPU), allocates without bound
//! (memory), blocks in imports forever (wall clock), or passes huge values
//! to the host (argument sizes, checked in each import).
use std::time::Duration;

/// Limits applied to every run of a plugin.
///
/// Defaults (see [`PluginLimits::default`]): 256 MiB of linear memory,
/// 10 billion units of fuel (roughly 10 billion wasm instructions) of CPU,
/// 30 minutes of wall-clock time, 64 KiB per event message, 64 runs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Largest total linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Largest table size, in elements.
    pub table_elements: usize,
    /// Fuel (≈ wasm instructions) for the whole run; the plugin traps when
    /// it runs out.
    pub fuel: u64,
    /// Fuel between yields to the async runtime, so a busy plugin never
    /// hogs a runtime thread.
    pub fuel_yield_interval: u64,
    /// Wall-clock time for the whole run, including time in imports.
    pub wall_clock: Duration,
    /// Largest event message (`session.emit`, `report-panic`), in bytes.
    pub max_event_bytes: usize,
    /// Largest text a plugin may propose to the forge (comment, PR body).
    pub max_forge_text_bytes: usize,
    /// Largest file a plugin may read or write through `workspace`.
    pub max_file_bytes: usize,
    /// Plugin instances alive at once in this host. Memories, tables and
    /// stacks for this many are reserved up front (pooling allocator), which
    /// is what makes a fresh instance per run cheap; a run beyond it fails
    /// to instantiate with a clear error instead of exhausting the host.
    pub max_concurrent_runs: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 256 << 20,
            table_elements: 100_000,
            fuel: 10_000_000_000,
            fuel_yield_interval: 1_000_000,
            wall_clock: Duration::from_secs(30 * 60),
            max_event_bytes: 64 << 10,
            max_forge_text_bytes: 64 << 10,
            max_file_bytes: 8 << 20,
            max_concurrent_runs: 64,
        }
    }
}

/// Enforces the memory and table limits and remembers which one was hit, so
/// the run's error can say so instead of reporting a bare trap.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    /// Set when a limit refused a growth request.
    pub hit: Option<String>,
}

impl Limiter {
    /// A limiter for `limits`.
    pub fn new(limits: &PluginLimits) -> Self {
        Limiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            hit: None,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            let msg = format!(
                "memory limit: the plugin asked to grow its memory from {} MiB to {} MiB, the limit is {} MiB",
                current >> 20,
                desired.div_ceil(1 << 20),
                self.memory_bytes >> 20
            );
            self.hit = Some(msg.clone());
            // An error (not `Ok(false)`) traps at once: the guest's allocator
            // would otherwise abort with a message-less `unreachable`.
            return Err(wasmtime::Error::msg(msg));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            let msg = format!(
                "table limit: the plugin asked to grow a table from {current} to {desired} elements, the limit is {}",
                self.table_elements
            );
            self.hit = Some(msg.clone());
            return Err(wasmtime::Error::msg(msg));
        }
        Ok(true)
    }
}
