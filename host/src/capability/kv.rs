//! NATS KV behind `[kv] buckets`: the standard `wasi:keyvalue@0.2.0-draft` interfaces (`store`,
//! `atomics`, `batch`), so a component written against them for another host runs here, and
//! natsplug's `kv` interface beside them for what NATS KV adds: revisions and compare-and-swap.
//!
//! A guest opens a bucket by name; only granted buckets open (`access-denied` otherwise), and a
//! bucket granted `read` refuses every write (`access-denied`). Keys are checked before they
//! reach a subject ([`crate::policy::capabilities::refuse_invalid_key`]). Values are bytes as
//! the guest gave them; `increment` keeps a decimal number as text (what `nats kv get` shows),
//! updated by compare-and-swap so concurrent handlers never lose an increment.
//!
//! A bucket is opened once per plugin version ([`Granted::store`]), at load when the host has a
//! connection: a missing bucket fails the load, unless the grant says to create it.

use std::time::Duration;

use async_nats::jetstream::kv::{
    self as nats_kv, CreateErrorKind, Operation, Store, UpdateErrorKind,
};
use futures::StreamExt as _;
use wasmtime::component::Resource;

use super::{Call, Ended, remaining};
use crate::manifest::{Access, BucketGrant, BucketSettings};
use crate::policy::Denied;
use crate::policy::capabilities::{refuse_invalid_bucket, refuse_invalid_key};
use crate::runtime::Invocation;
use crate::runtime::bindings::natsplug::plugin::kv::{self as revisions, CasError, Entry};
use crate::runtime::bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// Keys one `list-keys` call returns (its cursor says where the next page starts), and the
/// most keys one batch call (`get-many`, `set-many`, `delete-many`) takes.
const PAGE: usize = 1000;
/// Keys `list-keys` goes through, all pages together: every page walks the bucket from its
/// first key, so a deeper cursor would cost the server more for each page.
const MAX_LISTED: usize = 100_000;
/// Rounds of read-then-compare-and-swap `increment` tries before it gives up on a key that
/// other writers keep changing.
const INCREMENT_TRIES: usize = 100;

/// A granted bucket of one plugin version, opened on first use.
pub(crate) struct Granted {
    name: String,
    access: Access,
    create: Option<BucketSettings>,
    store: tokio::sync::OnceCell<Store>,
}

impl Granted {
    pub(crate) fn new(name: &str, grant: &BucketGrant) -> Self {
        Self {
            name: name.to_owned(),
            access: grant.access(),
            create: grant.create().cloned(),
            store: tokio::sync::OnceCell::new(),
        }
    }

    /// The bucket's store, opened (or created, when the grant says so) the first time.
    pub(crate) async fn store(&self, nats: &async_nats::Client) -> Result<Store, String> {
        let store = self
            .store
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(nats.clone());
                match js.get_key_value(&self.name).await {
                    Ok(store) => Ok(store),
                    Err(e) => match &self.create {
                        None => Err(format!(
                            "kv bucket {:?} cannot be opened ({e}); create it, or grant it with \
                             {{ access = \"...\", create = true }}",
                            self.name
                        )),
                        Some(settings) => js
                            .create_key_value(nats_kv::Config {
                                bucket: self.name.clone(),
                                history: settings.history,
                                max_value_size: settings
                                    .max_value_size
                                    .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
                                max_age: settings.ttl.unwrap_or(Duration::ZERO),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| {
                                format!("kv bucket {:?} cannot be created: {e}", self.name)
                            }),
                    },
                }
            })
            .await?;
        Ok(store.clone())
    }
}

/// An open bucket: a resource in the instance's table.
pub struct Bucket {
    name: String,
    store: Store,
    write: bool,
}

/// An entry that holds a value (not a delete or purge marker).
fn live(entry: Option<nats_kv::Entry>) -> Option<nats_kv::Entry> {
    entry.filter(|e| e.operation == Operation::Put)
}

/// What a call cut at the handler's deadline answers.
fn deadline_passed() -> Error {
    Error::Other("the handler's deadline passed".into())
}

/// Waits for a call that answers a store error, at most until the handler's deadline.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(deadline_passed()))
}

/// Waits for a NATS call, at most until the handler's deadline; its error becomes `other`.
async fn wait<T, E: std::fmt::Display>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    within(limit, async {
        call.await.map_err(|e| Error::Other(e.to_string()))
    })
    .await
}

impl Invocation {
    /// Starts a KV call on `bucket` for `keys`: the bucket's store, or the error the guest gets
    /// (a spent budget, a refused key, a write to a `read` bucket).
    fn kv_begin(
        &mut self,
        bucket: &Resource<Bucket>,
        keys: &[&str],
        write: bool,
    ) -> wasmtime::Result<Result<(Call, Store), Error>> {
        // A batch counts each of its keys.
        let calls = u32::try_from(keys.len().max(1)).unwrap_or(u32::MAX);
        if keys.len() > PAGE {
            return Ok(Err(Error::Other(format!(
                "{} keys in one call; at most {PAGE}",
                keys.len()
            ))));
        }
        let call = match Call::start(self, "kv", calls) {
            Ok(call) => call,
            Err(reason) => return Ok(Err(Error::Other(reason))),
        };
        let open = self.table.get(bucket)?;
        let refused = if write && !open.write {
            Some(Denied::ReadOnlyBucket {
                bucket: open.name.clone(),
            })
        } else {
            keys.iter().find_map(|k| refuse_invalid_key(k).err())
        };
        let store = open.store.clone();
        match refused {
            None => Ok(Ok((call, store))),
            Some(denied) => {
                let error = match denied {
                    Denied::ReadOnlyBucket { .. } => Error::AccessDenied,
                    _ => Error::Other(denied.to_string()),
                };
                call.end(self, Ended::Denied, Some(&denied));
                Ok(Err(error))
            }
        }
    }

    /// Ends a KV call with its result.
    fn kv_end<T>(&mut self, call: Call, result: Result<T, Error>) -> Result<T, Error> {
        call.end(self, Ended::of(&result), None);
        result
    }
}

impl store::Host for Invocation {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        let call = match Call::start(self, "kv", 1) {
            Ok(call) => call,
            Err(reason) => return Ok(Err(Error::Other(reason))),
        };
        let plugin = self.plugin.clone();
        let granted = refuse_invalid_bucket(&identifier).and_then(|()| {
            plugin
                .capabilities
                .buckets
                .get(&identifier)
                .ok_or(Denied::BucketNotGranted {
                    bucket: identifier.clone(),
                })
        });
        let granted = match granted {
            Ok(granted) => granted,
            Err(denied) => {
                call.end(self, Ended::Denied, Some(&denied));
                return Ok(Err(Error::AccessDenied));
            }
        };
        let opened = match plugin.capabilities.services.nats() {
            Err(reason) => Err(Error::Other(reason)),
            Ok(nats) => {
                let opened = granted.store(nats);
                within(remaining(self), async {
                    opened.await.map_err(|reason| {
                        tracing::warn!(plugin = %plugin.name, "{reason}");
                        Error::NoSuchStore
                    })
                })
                .await
            }
        };
        let opened = self.kv_end(call, opened);
        Ok(match opened {
            Ok(store) => Ok(self.table.push(Bucket {
                name: identifier,
                store,
                write: granted.access == Access::ReadWrite,
            })?),
            Err(e) => Err(e),
        })
    }
}

impl store::HostBucket for Invocation {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], false)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let got = wait(remaining(self), store.entry(key)).await;
        let got = got.map(|e| live(e).map(|e| e.value.to_vec()));
        Ok(self.kv_end(call, got))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let put = wait(remaining(self), store.put(key, value.into())).await;
        Ok(self.kv_end(call, put.map(|_revision| ())))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let deleted = wait(remaining(self), store.delete(key)).await;
        Ok(self.kv_end(call, deleted))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], false)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let got = wait(remaining(self), store.entry(key)).await;
        Ok(self.kv_end(call, got.map(|e| live(e).is_some())))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[], false)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        // Each page walks the bucket's keys from the start.
        if skip > MAX_LISTED {
            let call_result = Err(Error::Other(format!(
                "list-keys lists at most {MAX_LISTED} keys"
            )));
            return Ok(self.kv_end(call, call_result));
        }
        let listed = wait(remaining(self), async {
            let mut keys = store.keys().await?.skip(skip).take(PAGE + 1);
            let mut page = Vec::with_capacity(PAGE);
            while let Some(key) = keys.next().await {
                page.push(key?);
            }
            Ok::<_, async_nats::Error>(page)
        })
        .await;
        let listed = listed.map(|mut keys| {
            let more = keys.len() > PAGE;
            keys.truncate(PAGE);
            KeyResponse {
                cursor: more.then(|| (skip + PAGE) as u64),
                keys,
            }
        });
        Ok(self.kv_end(call, listed))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

/// Adds `delta` to the decimal number stored at `key` (absent: 0) by compare-and-swap.
async fn increment(store: &Store, key: &str, delta: u64) -> Result<u64, Error> {
    for _ in 0..INCREMENT_TRIES {
        let current = live(
            store
                .entry(key)
                .await
                .map_err(|e| Error::Other(e.to_string()))?,
        );
        let (value, revision) = match &current {
            None => (0, 0),
            Some(entry) => {
                let text = std::str::from_utf8(&entry.value).unwrap_or_default();
                let value = text.trim().parse::<u64>().map_err(|_| {
                    Error::Other(format!("the value of {key:?} is not a decimal number"))
                })?;
                (value, entry.revision)
            }
        };
        let next = value
            .checked_add(delta)
            .ok_or_else(|| Error::Other(format!("{key:?} would pass 2^64")))?;
        match swap(store, key, next.to_string().into_bytes(), revision).await {
            Ok(_) => return Ok(next),
            Err(CasError::Conflict) => continue,
            Err(CasError::Store(e)) => return Err(e),
        }
    }
    Err(Error::Other(format!(
        "{key:?} kept changing under {INCREMENT_TRIES} tries to increment it"
    )))
}

/// Stores `value` at `key` only if the key is at `revision` (0: has no value).
async fn swap(store: &Store, key: &str, value: Vec<u8>, revision: u64) -> Result<u64, CasError> {
    if revision == 0 {
        return store
            .create(key, value.into())
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => CasError::Conflict,
                _ => CasError::Store(Error::Other(e.to_string())),
            });
    }
    store
        .update(key, value.into(), revision)
        .await
        .map_err(|e| match e.kind() {
            UpdateErrorKind::WrongLastRevision => CasError::Conflict,
            _ => CasError::Store(Error::Other(e.to_string())),
        })
}

impl atomics::Host for Invocation {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let added = within(remaining(self), increment(&store, &key, delta)).await;
        Ok(self.kv_end(call, added))
    }
}

impl batch::Host for Invocation {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (call, store) = match self.kv_begin(&bucket, &refs, false)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        // What the values may add up to: the guest's own memory limit, as it must hold them.
        let limit = self.plugin.manifest.limits.memory;
        let got = wait(remaining(self), async {
            let mut values = Vec::with_capacity(keys.len());
            let mut bytes = 0u64;
            for key in keys {
                let entry = live(store.entry(key.clone()).await?);
                bytes += entry.as_ref().map_or(0, |e| e.value.len() as u64);
                if bytes > limit {
                    return Err(format!(
                        "the values pass the plugin's limits.memory of {limit} bytes"
                    )
                    .into());
                }
                values.push(entry.map(|e| (key, e.value.to_vec())));
            }
            Ok::<_, async_nats::Error>(values)
        })
        .await;
        Ok(self.kv_end(call, got))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let refs: Vec<&str> = key_values.iter().map(|(k, _)| k.as_str()).collect();
        let (call, store) = match self.kv_begin(&bucket, &refs, true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let set = wait(remaining(self), async {
            for (key, value) in key_values {
                store.put(key, value.into()).await?;
            }
            Ok::<_, async_nats::Error>(())
        })
        .await;
        Ok(self.kv_end(call, set))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (call, store) = match self.kv_begin(&bucket, &refs, true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let deleted = wait(remaining(self), async {
            for key in keys {
                store.delete(key).await?;
            }
            Ok::<_, async_nats::Error>(())
        })
        .await;
        Ok(self.kv_end(call, deleted))
    }
}

impl revisions::Host for Invocation {
    async fn get_entry(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Entry>, Error>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], false)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(e)),
        };
        let got = wait(remaining(self), store.entry(key)).await;
        let got = got.map(|e| {
            live(e).map(|e| Entry {
                value: e.value.to_vec(),
                revision: e.revision,
            })
        });
        Ok(self.kv_end(call, got))
    }

    async fn compare_and_swap(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> wasmtime::Result<Result<u64, CasError>> {
        let (call, store) = match self.kv_begin(&bucket, &[&key], true)? {
            Ok(begun) => begun,
            Err(e) => return Ok(Err(CasError::Store(e))),
        };
        let swapped = match tokio::time::timeout(
            remaining(self),
            swap(&store, &key, value, revision),
        )
        .await
        {
            Ok(swapped) => swapped,
            Err(_) => Err(CasError::Store(deadline_passed())),
        };
        // A conflict is an answer, not a failure of the store.
        let ended = match &swapped {
            Ok(_) | Err(CasError::Conflict) => Ended::Ok,
            Err(CasError::Store(_)) => Ended::Error,
        };
        call.end(self, ended, None);
        Ok(swapped)
    }
}
