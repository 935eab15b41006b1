//! The plugin host: one `Engine` and `Linker` for the process, one
//! `InstancePre` per loaded plugin, one fresh `Store` per run.
//!
//! A run that traps, panics, runs out of fuel or memory, or overstays its
//! wall-clock cap fails with a [`RunError`] that says which; its `Store` is
//! dropped and nothing else is affected, so the next run starts clean.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

use super::capability::{CapabilitySet, builtin_role_grants};
use super::inspect::{self, LoadError, PluginInfo};
use super::limits::PluginLimits;
use super::wit::{Linkers, RolePre};
use super::{Outcome, Task};
use crate::forge::Proposal;
use crate::imports::{GuestLimitExceeded, RunContext, RunState};
use crate::session::{Budget, EventKind};

/// Why a run failed. Each variant names the plugin and says what happened
/// in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The plugin used up its fuel (CPU) budget.
    #[error("plugin {plugin} exceeded its CPU limit ({fuel} units of fuel) and was stopped")]
    CpuLimit {
        /// Plugin name.
        plugin: String,
        /// The fuel it had.
        fuel: u64,
    },
    /// The plugin tried to grow its memory past the limit.
    #[error("plugin {plugin} was stopped: {message}")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// What it asked for.
        message: String,
    },
    /// The run took longer than its wall-clock cap.
    #[error(
        "plugin {plugin} was stopped after its wall-clock limit of {} s",
        limit.as_secs_f64()
    )]
    WallClock {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: std::time::Duration,
    },
    /// The plugin passed an import more than a limit allows.
    #[error("plugin {plugin} was stopped: {message}")]
    GuestLimit {
        /// Plugin name.
        plugin: String,
        /// Which argument and which limit.
        message: String,
    },
    /// The plugin panicked.
    #[error("plugin {plugin} panicked: {message}")]
    Panicked {
        /// Plugin name.
        plugin: String,
        /// The panic message it reported.
        message: String,
    },
    /// The plugin trapped for another reason.
    #[error("plugin {plugin} trapped: {message}")]
    Trapped {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
    },
    /// The plugin returned an error from `run`.
    #[error("plugin {plugin} failed: {message}")]
    Role {
        /// Plugin name.
        plugin: String,
        /// The error it returned.
        message: String,
    },
    /// The plugin reported success after the host refused it a model turn
    /// for budget: work cut short by the budget is not a success.
    #[error("plugin {plugin} ran out of budget ({message}) but reported {claimed}")]
    BudgetExhausted {
        /// Plugin name.
        plugin: String,
        /// Which budget was spent.
        message: String,
        /// What the plugin claimed (`completed: <summary>`).
        claimed: String,
    },
    /// The plugin could not be instantiated.
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
}

/// What a run produced, successful or not.
#[derive(Debug)]
pub struct RunReport {
    /// The outcome, or why the run failed.
    pub result: Result<Outcome, RunError>,
    /// The forge effects the plugin proposed and the gate did not deny, in order.
    pub proposals: Vec<Proposal>,
    /// The same, with effect ids and what became of each (applied,
    /// recorded, held for approval).
    pub effects: Vec<crate::forge::EffectRecord>,
    /// How many forge proposals the gate denied.
    pub denied: usize,
    /// The budget as spent.
    pub budget: Budget,
}

/// A plugin compiled, checked and ready to instantiate.
pub struct LoadedPlugin {
    /// What the plugin is.
    pub info: PluginInfo,
    /// The capabilities it runs with.
    pub capabilities: CapabilitySet,
    pre: RolePre,
}

impl LoadedPlugin {
    /// The plugin's name (from its manifest).
    pub fn name(&self) -> &str {
        &self.info.manifest.name
    }
}

/// Errors building the host itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the plugin host: {0}")]
pub struct HostSetupError(String);

/// The engine's settings: fuel, and a pooling allocator sized for `limits`;
/// `pagemap` keeps the first pages of each slot resident between runs and
/// resets them with the kernel's list of dirty pages instead of `madvise`
/// (plugin bench: instantiate 14.6 µs → 9.8 µs with it).
fn engine_config(limits: &PluginLimits, pagemap: bool) -> Config {
    let mut config = Config::new();
    config.consume_fuel(true);
    // A component built by wit-component holds a few core instances
    // (the module plus adapter shims) and tables; size the pool for that.
    let runs = limits.max_concurrent_runs.max(1);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(runs)
        .total_core_instances(runs * 8)
        .max_core_instances_per_component(8)
        .total_memories(runs)
        .max_memories_per_component(1)
        .total_tables(runs * 4)
        .max_tables_per_component(4)
        .total_stacks(runs)
        .max_memory_size(limits.memory_bytes)
        .table_elements(limits.table_elements);
    if pagemap {
        // A plugin's stack and data sit in its first MiB or two.
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Compiles, checks, caches and runs role plugins.
pub struct PluginHost {
    engine: Engine,
    linkers: Linkers,
    limits: PluginLimits,
    role_grants: HashMap<String, CapabilitySet>,
    custom_skills: Arc<Vec<(String, Arc<str>)>>,
    plugins: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
}

impl PluginHost {
    /// A host applying `limits` to every run, with the built-in roles'
    /// grants (triage, spec, implementation, review, verification).
    pub fn new(limits: PluginLimits) -> Result<Self, HostSetupError> {
        // Reset memories by rewriting only their dirty pages where the kernel
        // can list them (PAGEMAP_SCAN, Linux ≥ 6.7); elsewhere (an error
        // here) by madvise as before, since without the scan keeping memory
        // resident means a memset of all of it, which is slower.
        let engine = match Engine::new(&engine_config(&limits, true)) {
            Ok(engine) => engine,
            Err(_) => Engine::new(&engine_config(&limits, false))
                .map_err(|e| HostSetupError(format!("{e:#}")))?,
        };
        let linkers = Linkers::new(&engine).map_err(|e| HostSetupError(format!("{e:#}")))?;
        let role_grants = crate::config::Role::ALL
            .into_iter()
            .filter_map(|r| builtin_role_grants(r.as_str()).map(|g| (r.as_str().to_string(), g)))
            .collect();
        Ok(PluginHost {
            engine,
            linkers,
            limits,
            role_grants,
            custom_skills: Arc::default(),
            plugins: RwLock::new(HashMap::new()),
        })
    }

    /// Grant `capabilities` to a custom role (or replace a built-in role's grants).
    pub fn grant_role(&mut self, role: &str, capabilities: CapabilitySet) {
        self.role_grants.insert(role.to_string(), capabilities);
    }

    /// Serve `text` as the core skill `name` (a custom role's skill file),
    /// beside the skills built into Kiln.
    pub fn add_skill(&mut self, name: &str, text: &str) {
        let mut skills = (*self.custom_skills).clone();
        skills.retain(|(n, _)| n != name);
        skills.push((name.to_string(), Arc::from(text)));
        self.custom_skills = Arc::new(skills);
    }

    /// The custom roles' core skills, for a run's context.
    pub fn custom_skills(&self) -> Arc<Vec<(String, Arc<str>)>> {
        self.custom_skills.clone()
    }

    /// The limits every run gets.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Describe a plugin and judge it, without loading it. The verdict is
    /// the capability set it would run with, or why it is refused.
    pub fn check(
        &self,
        bytes: &[u8],
    ) -> Result<(PluginInfo, Result<CapabilitySet, LoadError>), LoadError> {
        let (info, _) = inspect::inspect(&self.engine, bytes)?;
        let verdict = inspect::verdict(&info, &self.role_grants);
        Ok((info, verdict))
    }

    /// Compile, check and register a plugin under its manifest name,
    /// replacing any plugin of that name.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let (info, component) = inspect::inspect(&self.engine, bytes)?;
        let capabilities = inspect::verdict(&info, &self.role_grants)?;
        let bad_export = |reason: String| LoadError::BadExport {
            plugin: info.manifest.name.clone(),
            wit: info.manifest.wit.clone(),
            reason,
        };
        let pre =
            RolePre::new(&self.linkers, &info.manifest.wit, &component).map_err(bad_export)?;
        let plugin = Arc::new(LoadedPlugin {
            info,
            capabilities,
            pre,
        });
        if let Ok(mut plugins) = self.plugins.write() {
            plugins.insert(plugin.name().to_string(), plugin.clone());
        }
        Ok(plugin)
    }

    /// A loaded plugin by name.
    pub fn plugin(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.read().ok()?.get(name).cloned()
    }

    /// Run `plugin` once on `task` in a fresh store. Never panics and never
    /// affects other runs, whatever the plugin does.
    pub async fn run(&self, plugin: &LoadedPlugin, task: Task, ctx: RunContext) -> RunReport {
        let name = plugin.name().to_string();
        let events = ctx.events.clone();
        let pause = ctx.pause.clone();
        events.record(
            EventKind::Started,
            format!("plugin {name} {} started", plugin.info.manifest.version),
        );
        let (mut store, prepared) = self.new_store(plugin, ctx);
        let result = match prepared {
            Ok(()) => {
                let call = async {
                    let instance = plugin
                        .pre
                        .instantiate(&mut store)
                        .await
                        .map_err(|e| (true, e))?;
                    instance
                        .call_run(&mut store, &task)
                        .await
                        .map_err(|e| (false, e))
                };
                match wall_clock(self.limits.wall_clock, &pause, call).await {
                    Err(_elapsed) => Err(RunError::WallClock {
                        plugin: name.clone(),
                        limit: self.limits.wall_clock,
                    }),
                    Ok(Err((true, e))) => Err(RunError::Instantiate {
                        plugin: name.clone(),
                        message: format!("{e:#}"),
                    }),
                    Ok(Err((false, e))) => Err(self.classify(&name, e, store.data())),
                    Ok(Ok(Err(role_error))) => Err(RunError::Role {
                        plugin: name.clone(),
                        message: role_error.to_string(),
                    }),
                    Ok(Ok(Ok(outcome))) => {
                        over_budget(&name, outcome, store.data().model.refused.as_deref())
                    }
                }
            }
            Err(message) => Err(RunError::Instantiate {
                plugin: name.clone(),
                message,
            }),
        };
        let message = match &result {
            // The summary is the run's `finished` message; said once, there.
            Ok(o) => format!("the plugin returned {}", o.status),
            Err(e) => e.to_string(),
        };
        let state = store.into_data();
        // Through the run's own (redacting) sink: the summary is plugin text.
        // A progress event, not the run's end: the worker records that
        // (`finished`) once it has applied the plugin's proposals, whose
        // fate can change how the run ends.
        state.events.record(EventKind::Progress, message);
        RunReport {
            result,
            proposals: state.forge.proposals,
            effects: state.forge.effects,
            denied: state.forge.denied,
            budget: state.model.budget,
        }
    }

    /// Instantiate `plugin` in a fresh store and drop it without running
    /// it: checks that it can start, and measures what every run pays.
    pub async fn instantiate_probe(&self, plugin: &LoadedPlugin) -> Result<(), RunError> {
        let ctx = RunContext::new(std::sync::Arc::new(crate::session::MemoryEvents::new()));
        let (mut store, prepared) = self.new_store(plugin, ctx);
        let instantiate = |message| RunError::Instantiate {
            plugin: plugin.name().to_string(),
            message,
        };
        prepared.map_err(instantiate)?;
        plugin
            .pre
            .instantiate(&mut store)
            .await
            .map_err(|e| instantiate(format!("{e:#}")))?;
        Ok(())
    }

    /// A fresh store for one run of `plugin`, with its limits applied; the
    /// second value says whether the fuel settings could be applied.
    fn new_store(
        &self,
        plugin: &LoadedPlugin,
        ctx: RunContext,
    ) -> (Store<RunState>, Result<(), String>) {
        let state = RunState::new(
            plugin.name(),
            &plugin.info.manifest.role,
            plugin.capabilities.clone(),
            self.limits.clone(),
            ctx,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let prepared = self.prepare_store(&mut store);
        (store, prepared)
    }

    fn prepare_store(&self, store: &mut Store<RunState>) -> Result<(), String> {
        store
            .set_fuel(self.limits.fuel)
            .map_err(|e| format!("{e:#}"))?;
        store
            .fuel_async_yield_interval(Some(self.limits.fuel_yield_interval))
            .map_err(|e| format!("{e:#}"))?;
        Ok(())
    }

    /// Say which limit or failure stopped a trapped run.
    fn classify(&self, plugin: &str, error: wasmtime::Error, state: &RunState) -> RunError {
        let plugin = plugin.to_string();
        if let Some(GuestLimitExceeded(message)) = error.downcast_ref::<GuestLimitExceeded>() {
            return RunError::GuestLimit {
                plugin,
                message: message.clone(),
            };
        }
        if let Some(message) = &state.limiter.hit {
            return RunError::MemoryLimit {
                plugin,
                message: message.clone(),
            };
        }
        if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
            return RunError::CpuLimit {
                plugin,
                fuel: self.limits.fuel,
            };
        }
        if let Some(message) = &state.panic {
            return RunError::Panicked {
                plugin,
                message: message.clone(),
            };
        }
        let message = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        RunError::Trapped { plugin, message }
    }
}

/// A plugin's outcome, unless it claims success after a model turn was
/// refused for budget: only `blocked` is an honest answer then.
fn over_budget(plugin: &str, outcome: Outcome, refused: Option<&str>) -> Result<Outcome, RunError> {
    match refused {
        Some(why) if outcome.status != super::OutcomeStatus::Blocked => {
            Err(RunError::BudgetExhausted {
                plugin: plugin.to_string(),
                message: why.to_string(),
                claimed: format!("{}: {}", outcome.status, outcome.summary),
            })
        }
        _ => Ok(outcome),
    }
}

/// Run `call` under the plugin's wall-clock limit, not counting time the
/// run spent paused for an attached operator. `Err` when the limit passed.
async fn wall_clock<F: std::future::Future>(
    limit: std::time::Duration,
    pause: &crate::session::Pause,
    call: F,
) -> Result<F::Output, ()> {
    let start = tokio::time::Instant::now();
    tokio::pin!(call);
    loop {
        let deadline = start + limit + pause.paused_for();
        tokio::select! {
            out = &mut call => return Ok(out),
            () = tokio::time::sleep_until(deadline) => {
                if !pause.is_paused() && start + limit + pause.paused_for() <= tokio::time::Instant::now() {
                    return Err(());
                }
                // Paused (or a pause just ended and moved the deadline): keep
                // the call going, and look again once resumed.
                tokio::select! {
                    out = &mut call => return Ok(out),
                    () = pause.until_resumed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wall_clock;
    use crate::session::Pause;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn time_paused_for_an_operator_does_not_count_against_the_wall_clock() {
        let limit = Duration::from_secs(10);
        let work = || tokio::time::sleep(Duration::from_secs(15));
        let pause = Pause::new();
        assert!(
            wall_clock(limit, &pause, work()).await.is_err(),
            "15 s of work must exceed a 10 s limit"
        );
        let pause = Pause::new();
        let guard = pause.hold();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            drop(guard);
        });
        assert!(
            wall_clock(limit, &pause, work()).await.is_ok(),
            "8 s paused leave 10 s for 15 s of work that went on meanwhile"
        );
        release.await.expect("release");
    }
}
