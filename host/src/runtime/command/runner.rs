//! The command runner: a WASI preview 1 command module (Go's `GOOS=wasip1`, C with wasi-libc,
//! any `wasm32-wasip1` program) run as a handler. Each message gets a fresh instance whose
//! `_start` runs once, under the same fuel, deadline and memory limits and the same sandbox as
//! a component (only the manifest's `sandbox.env` and `sandbox.dirs`; preview 1 has no
//! sockets). The message goes in as the contract's stdin and environment ([`super`]); stdout
//! is kept in memory up to twice the output budget, in the host-wide output pool
//! ([`Stdout`]); stderr is the guest's log, its last line
//! the reason of a failure; the exit status and the frames become the [`Outcome`], and every
//! output goes through the same [`Admission`] as a component's.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{ExternType, InstancePre, Linker, Module};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use super::super::admission::Admission;
use super::super::guest_log::{GuestLog, LogBudget};
use super::super::invocation::{MemoryLimiter, grant_env_and_dirs};
use super::super::{Failed, Handled, HandlerError, Limited, Outcome, PluginInner, limited_store};
use super::stdout::{Full, Stdout};
use crate::message::Message;
use crate::policy::Denied;

/// The prefix of the environment names the contract sets; a manifest's `sandbox.env` may not
/// use it.
pub(crate) const RESERVED_ENV_PREFIX: &str = "NATSPLUG_";

/// The exit status of a Go program whose runtime panicked (after a `panic: ` line on stderr,
/// which [`GuestLog::go_panic`] keeps).
const GO_PANIC_STATUS: i32 = 2;

/// A command module, checked and pre-linked once per plugin version.
pub(crate) struct Program {
    pre: InstancePre<Run>,
}

/// The data of one run's `Store`.
pub(crate) struct Run {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    deadline: Instant,
}

impl Limited for Run {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// A linker with WASI preview 1 and nothing else: what a command module may import.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Run>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |run: &mut Run| &mut run.wasi)?;
    Ok(linker)
}

/// Whether `wasm` is a core module (the `\0asm` magic and version 1), not a component.
pub(crate) fn is_core_module(wasm: &[u8]) -> bool {
    wasm.get(..8) == Some(b"\0asm\x01\0\0\0")
}

impl Program {
    /// Checks that `module` is a command (it exports `_start`) and links its imports, or says
    /// why it cannot run.
    pub(crate) fn new(linker: &Linker<Run>, module: &Module) -> Result<Self, String> {
        match module.get_export("_start") {
            Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
            _ => {
                return Err(
                    "the module exports no `_start` function: build it as a command \
                            (a program with a main function), or as a natsplug component"
                        .to_owned(),
                );
            }
        }
        let pre = linker.instantiate_pre(module).map_err(|e| {
            format!("{e:#} (a command module may import only wasi_snapshot_preview1)")
        })?;
        Ok(Self { pre })
    }

    /// Runs the program once for `message` and turns how it ended into an outcome, its
    /// outputs admitted.
    pub(crate) async fn run(
        &self,
        plugin: &Arc<PluginInner>,
        message: &Message,
        handled: &mut Handled,
    ) -> Result<Outcome, HandlerError> {
        let limits = &plugin.manifest.limits;
        let env = match super::environment(message) {
            Ok(env) => env,
            Err(reason) => return Ok(Outcome::Reject { reason }),
        };
        let log = Arc::new(LogBudget::new(limits.log_bytes));
        let stderr = GuestLog::stderr(plugin.name.clone(), log.clone());
        let stdout = Stdout::new(
            stdout_capacity(limits.output_bytes),
            plugin.output_pool.clone(),
        );
        let deadline = Instant::now() + limits.deadline;
        let wasi = sandbox(plugin, message, env, stdout.clone(), stderr.clone()).map_err(|e| {
            HandlerError::Instantiate {
                plugin: plugin.name.to_string(),
                message: format!("cannot prepare the sandbox: {e:#}"),
            }
        })?;
        let mut store = limited_store(
            &plugin.engine,
            Run {
                wasi,
                limiter: MemoryLimiter::new(limits.memory),
                deadline,
            },
        );
        let fuel = if limits.fuel == 0 {
            u64::MAX
        } else {
            limits.fuel
        };
        store.set_fuel(fuel).expect("fuel is enabled on the engine");
        store.set_epoch_deadline(1);

        let run = async {
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(Failed::Instantiate)?;
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(Failed::Instantiate)?;
            start.call_async(&mut store, ()).await.map_err(Failed::Call)
        };
        // The epoch stops a busy program; the timeout one that waits (a sleep, a poll).
        let result = tokio::time::timeout(limits.deadline, run).await;
        handled.fuel = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let tail = stderr.finish();
        log.report(&plugin.name);
        // A write refused is why the program ended, whatever it did next (a trap, an exit).
        let written = stdout.finish();
        let mut admission =
            Admission::new(plugin.clone(), message.reply.is_some()).prepaid(written.held);
        match written.full {
            Some(Full::Capacity) => {
                let refused = admission.refuse(Denied::OutputLimit {
                    limit: limits.output_bytes.min(plugin.output_pool.limit),
                });
                handled.denials = admission.denials;
                return Err(refused);
            }
            Some(Full::Pool) => {
                return Err(HandlerError::OutputPoolFull {
                    plugin: plugin.name.to_string(),
                    limit: plugin.output_pool.limit,
                });
            }
            None => {}
        }
        let memory_exceeded = store.data().limiter.exceeded;
        let status = match result {
            Err(_elapsed) => {
                return Err(HandlerError::Deadline {
                    plugin: plugin.name.to_string(),
                    deadline: limits.deadline,
                });
            }
            Ok(Ok(())) => 0,
            // `proc_exit`, from `_start` or from a start function run while instantiating.
            Ok(Err(Failed::Call(e) | Failed::Instantiate(e)))
                if e.downcast_ref::<I32Exit>().is_some() =>
            {
                e.downcast_ref::<I32Exit>().map_or(1, |exit| exit.0)
            }
            Ok(Err(failed)) => return Err(plugin.classify(failed, memory_exceeded, &tail)),
        };
        // A program that hit the memory limit and then exited (Go's "out of memory", a C
        // program's failed malloc) failed because of the limit.
        if memory_exceeded && status != 0 {
            return Err(HandlerError::Memory {
                plugin: plugin.name.to_string(),
                limit: limits.memory,
            });
        }
        // Go's runtime exits with 2 after printing the panic.
        if status == GO_PANIC_STATUS
            && let Some(message) = stderr.go_panic()
        {
            return Err(HandlerError::Panic {
                plugin: plugin.name.to_string(),
                message,
            });
        }
        let outcome = super::outcome_admitting(
            status,
            &written.bytes,
            tail.as_bytes(),
            plugin.manifest.config.get("output").map(String::as_str),
            |output| admission.admit(output),
        );
        handled.denials = admission.denials;
        handled.held = admission.held;
        outcome
    }
}

/// What stdout may hold: twice the output budget (a frame's JSON and base64 are larger than
/// its bytes) and 64 KiB; admission then counts the outputs' own bytes against the budget.
fn stdout_capacity(output_bytes: u64) -> usize {
    usize::try_from(output_bytes.saturating_mul(2).saturating_add(64 << 10)).unwrap_or(usize::MAX)
}

/// The program's WASI context: the payload on stdin, the manifest's variables and `[config]`
/// then the message in the environment, its granted directories, nothing else.
fn sandbox(
    plugin: &PluginInner,
    message: &Message,
    env: Vec<(String, String)>,
    stdout: Stdout,
    stderr: GuestLog,
) -> anyhow::Result<WasiP1Ctx> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(MemoryInputPipe::new(message.payload.clone()))
        .stdout(stdout)
        .stderr(stderr)
        .arg(&*plugin.name);
    grant_env_and_dirs(&mut wasi, &plugin.manifest.sandbox)?;
    for (key, value) in &plugin.manifest.config {
        wasi.env(super::config_env_name(key), value);
    }
    for (key, value) in env {
        wasi.env(key, value);
    }
    Ok(wasi.build_p1())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_module_is_told_from_a_component() {
        assert!(is_core_module(b"\0asm\x01\0\0\0rest"));
        // A component: the same magic, layer 1.
        assert!(!is_core_module(b"\0asm\x0d\0\x01\0"));
        assert!(!is_core_module(b"\0asm"));
        assert!(!is_core_module(b""));
    }

    #[test]
    fn stdout_holds_twice_the_budget() {
        assert_eq!(stdout_capacity(1 << 20), (2 << 20) + (64 << 10));
        assert_eq!(stdout_capacity(u64::MAX), usize::MAX);
    }
}
