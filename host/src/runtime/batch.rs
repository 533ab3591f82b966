//! Batch calls (`[batch]`): inputs that arrive together are handed to the guest's
//! `handle-batch` export in one call, and each gets its own answer back.
//!
//! The first input of a batch opens it and starts a task that waits up to `max_wait` for
//! others (or until `max` are in), then makes the call. Every input keeps its own life in the
//! consumer meanwhile: its heartbeat runs, and it is settled on its own result (acked, nak'ed
//! or dead-lettered independently). Which inputs share a call is up to timing; nothing else
//! depends on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::{Handled, HandlerError, Hooks, Plugin};
use crate::manifest::Batch;
use crate::message::Message;

/// Gathers one plugin version's inputs into batch calls.
pub(crate) struct Batcher {
    max: usize,
    max_wait: Duration,
    /// The batch still taking inputs, if any.
    open: Mutex<Option<Arc<Open>>>,
}

/// A batch taking inputs.
#[derive(Default)]
struct Open {
    inputs: Mutex<Vec<Waiting>>,
    /// Told when the batch is full, so its call starts at once.
    full: Notify,
}

/// An input in a batch, and where its answer goes.
struct Waiting {
    message: Message,
    hooks: Hooks,
    answer: oneshot::Sender<Handled>,
}

impl Batcher {
    pub(crate) fn new(batch: &Batch) -> Self {
        Self {
            max: batch.max.get(),
            max_wait: batch.max_wait,
            open: Mutex::default(),
        }
    }

    /// Puts `message` into the open batch (opening one, with the task that calls it, if none
    /// is open) and waits for its answer.
    pub(crate) async fn submit(&self, plugin: &Plugin, message: Message, hooks: Hooks) -> Handled {
        let (answer, answered) = oneshot::channel();
        let opened = {
            let mut open = lock(&self.open);
            let (batch, opened) = match &*open {
                Some(batch) => (batch.clone(), None),
                None => {
                    let batch = Arc::new(Open::default());
                    *open = Some(batch.clone());
                    (batch.clone(), Some(batch))
                }
            };
            let mut inputs = lock(&batch.inputs);
            inputs.push(Waiting {
                message,
                hooks,
                answer,
            });
            // Full: no other input joins it, and its call starts now.
            if inputs.len() >= self.max {
                *open = None;
                batch.full.notify_one();
            }
            opened
        };
        if let Some(batch) = opened {
            tokio::spawn(call(plugin.clone(), batch, self.max_wait));
        }
        answered.await.unwrap_or_else(|_| {
            // The call's task ended without answering: only a panic in the host does that.
            Handled::of(Err(HandlerError::Instantiate {
                plugin: plugin.name().to_owned(),
                message: "the batch call ended without an answer".into(),
            }))
        })
    }

    /// Closes `batch` if it is still the open one.
    fn close(&self, batch: &Arc<Open>) {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, batch)) {
            *open = None;
        }
    }
}

/// Waits for `batch` to fill or for `max_wait`, closes it, calls `handle-batch` and sends each
/// input its answer.
async fn call(plugin: Plugin, batch: Arc<Open>, max_wait: Duration) {
    tokio::select! {
        () = batch.full.notified() => {}
        () = tokio::time::sleep(max_wait) => {}
    }
    if let Some(batcher) = &plugin.inner.batcher {
        batcher.close(&batch);
    }
    // Closed under the batcher's lock, so no input joins it from here on.
    let waiting = std::mem::take(&mut *lock(&batch.inputs));
    let (inputs, answers): (Vec<_>, Vec<_>) = waiting
        .into_iter()
        .map(|w| ((w.message, w.hooks), w.answer))
        .unzip();
    let handled = plugin.handle_batch(&inputs).await;
    for (answer, handled) in answers.into_iter().zip(handled) {
        // An input whose message was given up on (the host's abort) no longer listens.
        let _ = answer.send(handled);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // What the locks guard stays whole: pushes and takes.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
