//! The async face of the engine: a dedicated thread runs EngineCore steps, callers add
//! requests and read per-request event streams. Dropping a stream aborts its request.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use tokio::sync::{mpsc, oneshot};

use super::{EngineCore, RequestOutput};
use crate::kv::manager::SeqId;
use crate::request::SamplingParams;
use crate::runner::ModelRunner;
use crate::scheduler::SchedulerStats;

/// What a request's stream yields: output deltas, the last one with a finish reason, or an
/// engine error (after which the stream ends).
#[derive(Debug, Clone)]
pub enum RequestEvent {
    Output(RequestOutput),
    Error(String),
}

/// Counters the server exports as metrics; refreshed after every step.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    pub num_blocks: usize,
    pub num_free_blocks: usize,
    pub steps: u64,
    /// The engine thread is running its loop (false before start and after it exits).
    pub alive: bool,
    /// Speculative decoding counters; None when it is off.
    pub spec: Option<crate::spec::SpecStats>,
    /// The KV cache's dtype and sizing; None when the engine was not told.
    pub kv_info: Option<crate::kv::KvCacheInfo>,
}

// One Add per request crosses this channel; boxing it would save nothing that matters.
#[allow(clippy::large_enum_variant)]
enum Command {
    Add {
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        events: mpsc::UnboundedSender<RequestEvent>,
        reply: oneshot::Sender<Result<SeqId>>,
    },
    Abort(SeqId),
    Shutdown,
}

/// Cheap to clone; every clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std_mpsc::Sender<Command>,
    stats: Arc<RwLock<EngineStats>>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// A request's events; dropping it before the request finished aborts the request.
pub struct RequestStream {
    pub id: SeqId,
    events: mpsc::UnboundedReceiver<RequestEvent>,
    commands: std_mpsc::Sender<Command>,
    done: bool,
}

impl RequestStream {
    /// The next event, or None once the request has ended.
    pub async fn next(&mut self) -> Option<RequestEvent> {
        if self.done {
            return None;
        }
        let ev = self.events.recv().await;
        match &ev {
            Some(RequestEvent::Output(o)) if o.finish_reason.is_none() => {}
            _ => self.done = true,
        }
        ev
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

impl EngineHandle {
    /// Starts the engine thread; `build` runs on it (so a GPU is driven from one thread) and
    /// this returns once it has built the engine, or with its error.
    pub fn spawn<R, F>(build: F) -> Result<Self>
    where
        R: ModelRunner + 'static,
        F: FnOnce() -> Result<EngineCore<R>> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::channel();
        let stats = Arc::new(RwLock::new(EngineStats::default()));
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<()>>();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("flare-engine".into())
            .spawn(move || {
                let engine = match build() {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                run_loop(engine, rx, &thread_stats);
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("engine thread died while building"))??;
        Ok(Self {
            commands: tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Queues a request. Errors (e.g. prompt longer than max_model_len) come back here.
    pub async fn add(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<RequestStream> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        self.commands
            .send(Command::Add {
                prompt,
                params,
                priority,
                events: events_tx,
                reply,
            })
            .map_err(|_| anyhow!("engine is not running"))?;
        let id = reply_rx
            .await
            .map_err(|_| anyhow!("engine is not running"))??;
        Ok(RequestStream {
            id,
            events,
            commands: self.commands.clone(),
            done: false,
        })
    }

    pub fn abort(&self, id: SeqId) {
        let _ = self.commands.send(Command::Abort(id));
    }

    pub fn stats(&self) -> EngineStats {
        // A panic on the engine thread can poison the lock; the numbers are still readable.
        self.stats.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_alive(&self) -> bool {
        self.stats().alive
    }

    /// Stops the loop once in-flight requests are done (new ones are refused by the caller),
    /// and joins the thread.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

/// Marks the engine dead when its thread leaves the loop, by return or by panic, so that health
/// checks see a crashed engine.
struct NotAliveOnDrop<'a>(&'a RwLock<EngineStats>);

impl Drop for NotAliveOnDrop<'_> {
    fn drop(&mut self) {
        let mut s = self.0.write().unwrap_or_else(|e| e.into_inner());
        s.alive = false;
    }
}

struct Live {
    events: mpsc::UnboundedSender<RequestEvent>,
}

fn run_loop<R: ModelRunner>(
    mut engine: EngineCore<R>,
    rx: std_mpsc::Receiver<Command>,
    stats: &RwLock<EngineStats>,
) {
    let mut live: std::collections::HashMap<SeqId, Live> = Default::default();
    // Declared after `live`, so dropped before it: on a panic the engine reads as dead before
    // any request's stream ends, and a client that sees its error then sees /health 503.
    let _dead_on_exit = NotAliveOnDrop(stats);
    let mut shutting_down = false;
    let publish = |engine: &EngineCore<R>, steps: u64| {
        let kv = engine.scheduler().kv();
        let mut s = stats.write().expect("stats lock");
        *s = EngineStats {
            scheduler: engine.scheduler().stats(),
            num_blocks: kv.pool().num_blocks(),
            num_free_blocks: kv.num_free_blocks(),
            steps,
            alive: true,
            spec: engine.spec_stats().cloned(),
            kv_info: engine.kv_info(),
        };
    };
    let mut steps = 0u64;
    publish(&engine, steps);
    loop {
        // Block only when idle; otherwise take what is queued and step.
        let mut cmds: Vec<Command> = Vec::new();
        if !engine.has_unfinished() {
            if shutting_down {
                return;
            }
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => return,
            }
        }
        cmds.extend(rx.try_iter());
        for cmd in cmds {
            match cmd {
                Command::Add {
                    prompt,
                    params,
                    priority,
                    events,
                    reply,
                } => {
                    let res = if shutting_down {
                        Err(anyhow!("engine is shutting down"))
                    } else {
                        engine.add_request(prompt, params, priority)
                    };
                    match res {
                        Ok(id) => {
                            if reply.send(Ok(id)).is_ok() {
                                live.insert(id, Live { events });
                            } else {
                                // The caller went away before learning its id.
                                engine.abort(id);
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Abort(id) => {
                    engine.abort(id);
                    live.remove(&id);
                }
                Command::Shutdown => shutting_down = true,
            }
        }
        if engine.has_unfinished() {
            match engine.step() {
                Ok(outputs) => {
                    for mut out in outputs {
                        let id = out.id;
                        let finished = out.finish_reason.is_some();
                        // A request that failed on its own ends with its error.
                        let event = match out.error.take() {
                            Some(e) => RequestEvent::Error(e),
                            None => RequestEvent::Output(out),
                        };
                        let delivered = live.get(&id).is_some_and(|l| l.events.send(event).is_ok());
                        if finished || !delivered {
                            live.remove(&id);
                            if !finished {
                                // The receiver is gone: free the blocks now, not at max_tokens.
                                engine.abort(id);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("engine step failed: {e:#}");
                    for (id, l) in live.drain() {
                        let _ = l
                            .events
                            .send(RequestEvent::Error(format!("engine error: {e}")));
                        engine.abort(id);
                    }
                }
            }
            steps += 1;
        }
        publish(&engine, steps);
    }
}
