//! NATS KV buckets, granted by the manifest's `[kv] buckets`: the standard `wasi:keyvalue`
//! calls, and the revisions NATS KV adds (`entry`, `compare_and_swap`), with which a handler
//! that may run twice for one input (a retry, a redelivery) applies its update once:
//!
//! ```no_run
//! use natsplug_sdk::kv::{Bucket, CasError};
//! use natsplug_sdk::{Error, Message, Output};
//!
//! fn handle(msg: Message) -> natsplug_sdk::Result {
//!     let counts = Bucket::open("counts")?;
//!     let key = msg.payload_str().map_err(Error::reject)?;
//!     let (count, revision) = match counts.entry(key)? {
//!         Some(e) => (String::from_utf8_lossy(&e.value).parse::<u64>().unwrap_or(0), e.revision),
//!         None => (0, 0),
//!     };
//!     match counts.compare_and_swap(key, (count + 1).to_string(), revision) {
//!         Ok(_) => Ok(vec![Output::to("counts.out").payload((count + 1).to_string())]),
//!         // Another writer got there first: read again on the next delivery.
//!         Err(CasError::Conflict) => Err(Error::retry("conflict")),
//!         Err(CasError::Store(e)) => Err(e.into()),
//!     }
//! }
//! ```
//!
//! With `?`, a [`KvError`] becomes a reject when the bucket is not granted or not there (no
//! retry can fix the manifest) and a retry otherwise.

use std::fmt;

use crate::bindings::natsplug::plugin::kv as revisions;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// Why a KV call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The bucket does not exist on the server.
    NoSuchStore,
    /// The manifest does not grant the bucket, or grants it `read` and this was a write.
    AccessDenied,
    /// Anything else: an invalid key, the server, the deadline.
    Other(String),
}

impl From<store::Error> for KvError {
    fn from(error: store::Error) -> Self {
        match error {
            store::Error::NoSuchStore => Self::NoSuchStore,
            store::Error::AccessDenied => Self::AccessDenied,
            store::Error::Other(reason) => Self::Other(reason),
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchStore => f.write_str("no such bucket"),
            Self::AccessDenied => f.write_str("access to the bucket denied (see [kv] buckets)"),
            Self::Other(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for KvError {}

impl From<KvError> for crate::Error {
    fn from(error: KvError) -> Self {
        match error {
            KvError::NoSuchStore | KvError::AccessDenied => Self::reject(error),
            KvError::Other(_) => Self::retry(error),
        }
    }
}

/// Why a compare-and-swap did not store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasError {
    /// The key is no longer at the revision given: another writer got there first.
    Conflict,
    /// The store failed, as for any other call.
    Store(KvError),
}

impl fmt::Display for CasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict => f.write_str("the key changed since it was read"),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CasError {}

impl From<CasError> for crate::Error {
    fn from(error: CasError) -> Self {
        match error {
            CasError::Conflict => Self::retry(error),
            CasError::Store(e) => e.into(),
        }
    }
}

/// A value and the revision of the bucket that stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// Its revision: pass it to [`Bucket::compare_and_swap`].
    pub revision: u64,
}

/// An open bucket.
#[derive(Debug)]
pub struct Bucket(store::Bucket);

impl Bucket {
    /// Opens the bucket `name`, which the manifest must grant.
    pub fn open(name: &str) -> Result<Self, KvError> {
        Ok(Self(store::open(name)?))
    }

    /// The key's value, if it has one.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key)?)
    }

    /// Sets the key's value.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) -> Result<(), KvError> {
        Ok(self.0.set(key, value.as_ref())?)
    }

    /// Deletes the key (nothing if it has no value).
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        Ok(self.0.delete(key)?)
    }

    /// Whether the key has a value.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.0.exists(key)?)
    }

    /// Every key with a value, page after page.
    pub fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.0.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the decimal number stored at `key` (0 when absent) and returns the sum;
    /// concurrent increments are never lost.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        Ok(atomics::increment(&self.0, key, delta)?)
    }

    /// The values of `keys`, in order (`None` for a key without one).
    pub fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let values = batch::get_many(&self.0, &keys)?;
        Ok(values
            .into_iter()
            .map(|v| v.map(|(_, value)| value))
            .collect())
    }

    /// Sets several keys (not atomically: a failure leaves the ones before it set).
    pub fn set_many(&self, pairs: &[(&str, &[u8])]) -> Result<(), KvError> {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        Ok(batch::set_many(&self.0, &pairs)?)
    }

    /// Deletes several keys.
    pub fn delete_many(&self, keys: &[&str]) -> Result<(), KvError> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        Ok(batch::delete_many(&self.0, &keys)?)
    }

    /// The key's value and revision, if it has a value.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(revisions::get_entry(&self.0, key)?.map(|e| Entry {
            value: e.value,
            revision: e.revision,
        }))
    }

    /// Stores `value` only if the key is still at `revision` (0: only if it has no value), and
    /// returns the new revision.
    pub fn compare_and_swap(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        revision: u64,
    ) -> Result<u64, CasError> {
        revisions::compare_and_swap(&self.0, key, value.as_ref(), revision).map_err(|e| match e {
            revisions::CasError::Conflict => CasError::Conflict,
            revisions::CasError::Store(e) => CasError::Store(e.into()),
        })
    }
}
