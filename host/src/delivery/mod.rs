//! The message path: one message from pull to settle.
//!
//! - [`consumer`]: a plugin's durable pull consumer (one pull loop per core thread) or core
//!   subscriptions; runs each message's handler and hands the answer to [`settle`].
//! - [`pull`]: pull requests sized by free handler slots, over one inbox per consumer.
//! - [`heartbeat`]: ack-progress while a message is in the host's hands, one ticker per loop.
//! - [`settle`]: what becomes of an input, decided and carried out: acked with every output
//!   stored, dead-lettered (stored, then termed), or back on the server.
//! - [`publisher`]: the publisher pool, publish acks and bounded retries.
//! - [`cores`]: a thread per worker of the host's runtime, each with its own single-threaded
//!   runtime and connections, where the pull loops run.
//! - [`faults`]: fault injection for the host's own tests.

pub mod consumer;
pub mod cores;
pub mod faults;
pub mod heartbeat;
pub mod publisher;
pub mod pull;
pub mod settle;
