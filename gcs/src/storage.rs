//! Where the GCS keeps its tables: a small table-oriented key-value trait with an in-memory
//! backend (the default; state dies with the process) and a Redis backend (write-through, so
//! a GCS restarted on the same Redis reloads everything).
//!
//! Records are opaque bytes here; the GCS stores prost-encoded proto messages so the Redis
//! format is the wire format and stays stable across versions.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use miniray_common::ErrorCode;
use parking_lot::RwLock;
use redis::aio::ConnectionManager;

/// Table of `NodeInfo` records keyed by node id bytes.
pub const NODES_TABLE: &str = "nodes";
/// Table of `JobInfo` records keyed by job id bytes.
pub const JOBS_TABLE: &str = "jobs";
/// Table of `ActorInfo` records keyed by actor id bytes.
pub const ACTORS_TABLE: &str = "actors";
/// Table of executables keyed by their blake3 hex hash.
pub const EXECUTABLES_TABLE: &str = "executables";
/// What the GCS keeps for the autoscaler across restarts (the `request_resources` floor).
pub const AUTOSCALER_TABLE: &str = "autoscaler";

/// The table holding the user KV namespace `ns`. Other tables never start with `kv/`, so
/// no namespace can collide with them.
pub fn kv_table(ns: &str) -> String {
    format!("kv/{ns}")
}

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend could not be reached or did not answer in time; retrying may help.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something unexpected.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The Redis URL could not be parsed.
    #[error("invalid redis url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl StorageError {
    /// The miniray error code an RPC reports for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::Unavailable(_) => ErrorCode::Unavailable,
            StorageError::Backend(_) | StorageError::BadUrl { .. } => ErrorCode::Internal,
        }
    }

    /// This failure as a `tonic::Status` for an RPC reply.
    pub fn to_status(&self) -> tonic::Status {
        self.code().status(self.to_string())
    }
}

impl From<redis::RedisError> for StorageError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            StorageError::Unavailable(e.to_string())
        } else {
            StorageError::Backend(e.to_string())
        }
    }
}

/// A set of named tables, each a map from byte keys to byte values.
///
/// Every method is atomic with respect to a single key; nothing is atomic across keys.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Sets `key` to `value`. Returns true when the key did not exist before.
    async fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<bool, StorageError>;

    /// Sets `key` to `value` only when the key does not exist. Returns true when it was set.
    async fn put_if_absent(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StorageError>;

    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// [`Storage::put`] of a value the caller hands over, which a backend that keeps
    /// values in memory keeps without a copy.
    async fn put_shared(
        &self,
        table: &str,
        key: &[u8],
        value: Bytes,
    ) -> Result<bool, StorageError> {
        self.put(table, key, &value).await
    }

    /// [`Storage::get`] as a shared buffer: a backend that keeps values in memory hands
    /// out the value itself, so that serving a large value (an executable) to many
    /// readers at once costs no copy per reader.
    async fn get_shared(&self, table: &str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.get(table, key).await?.map(Bytes::from))
    }

    async fn exists(&self, table: &str, key: &[u8]) -> Result<bool, StorageError>;

    /// Removes `key`. Returns true when it existed.
    async fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError>;

    /// Every entry of the table, in no particular order.
    async fn get_all(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;

    /// The keys of the table that start with `prefix`, sorted.
    async fn keys_with_prefix(
        &self,
        table: &str,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError>;
}

/// One table: sorted so prefix listing is a range scan.
type MemoryTable = BTreeMap<Vec<u8>, Bytes>;

/// Tables in process memory. Cheap, lost when the process exits.
#[derive(Default)]
pub struct MemoryStorage {
    tables: RwLock<HashMap<String, MemoryTable>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<bool, StorageError> {
        self.put_shared(table, key, Bytes::copy_from_slice(value))
            .await
    }

    async fn put_shared(
        &self,
        table: &str,
        key: &[u8],
        value: Bytes,
    ) -> Result<bool, StorageError> {
        let mut tables = self.tables.write();
        let t = tables.entry(table.to_string()).or_default();
        Ok(t.insert(key.to_vec(), value).is_none())
    }

    async fn put_if_absent(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StorageError> {
        let mut tables = self.tables.write();
        let t = tables.entry(table.to_string()).or_default();
        if t.contains_key(key) {
            return Ok(false);
        }
        t.insert(key.to_vec(), Bytes::copy_from_slice(value));
        Ok(true)
    }

    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tables
            .read()
            .get(table)
            .and_then(|t| t.get(key))
            .map(|v| v.to_vec()))
    }

    async fn get_shared(&self, table: &str, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .tables
            .read()
            .get(table)
            .and_then(|t| t.get(key))
            .cloned())
    }

    async fn exists(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self
            .tables
            .read()
            .get(table)
            .is_some_and(|t| t.contains_key(key)))
    }

    async fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self
            .tables
            .write()
            .get_mut(table)
            .is_some_and(|t| t.remove(key).is_some()))
    }

    async fn get_all(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        Ok(self
            .tables
            .read()
            .get(table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect())
            .unwrap_or_default())
    }

    async fn keys_with_prefix(
        &self,
        table: &str,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(self
            .tables
            .read()
            .get(table)
            .map(|t| {
                t.range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Default prefix of every Redis key the GCS writes.
pub const DEFAULT_REDIS_PREFIX: &str = "miniray:";

/// How long one Redis command may take before the RPC fails with `Unavailable`.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the GCS may take to reach Redis at start (connect and first PING, retries
/// included) before it gives up: a port that accepts but never answers must not hang it.
pub const REDIS_START_DEADLINE: Duration = Duration::from_secs(10);

/// Connect attempts after the first failed one.
const REDIS_CONNECT_RETRIES: usize = 3;
/// Longest pause between two connect attempts, in milliseconds.
const REDIS_MAX_RETRY_DELAY_MS: u64 = 500;

/// Tables in Redis: each table is one Redis hash named `{prefix}{table}`, each key a field.
///
/// The connection manager reconnects by itself after a dropped connection; a command issued
/// while Redis is down fails with [`StorageError::Unavailable`].
#[derive(Clone)]
pub struct RedisStorage {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisStorage {
    /// Connects to `url` (`redis://host:port[/db]`) with the default key prefix.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with_prefix(url, DEFAULT_REDIS_PREFIX).await
    }

    /// Connects with a custom key prefix, so that several clusters can share one Redis.
    /// Gives up after [`REDIS_START_DEADLINE`].
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StorageError> {
        let client = redis::Client::open(url).map_err(|e| StorageError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let conn = tokio::time::timeout(REDIS_START_DEADLINE, Self::open(client, url))
            .await
            .map_err(|_| {
                StorageError::Unavailable(format!(
                    "redis at {url} did not answer within {}s",
                    REDIS_START_DEADLINE.as_secs()
                ))
            })??;
        tracing::info!(url, prefix, "connected to redis");
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// A connection that answered PING.
    async fn open(client: redis::Client, url: &str) -> Result<ConnectionManager, StorageError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
            .set_response_timeout(REDIS_RESPONSE_TIMEOUT)
            // Retry a failed connect a few times quickly rather than with the library's
            // default backoff, which waits minutes before reporting an unreachable Redis.
            .set_number_of_retries(REDIS_CONNECT_RETRIES)
            .set_factor(2)
            .set_max_delay(REDIS_MAX_RETRY_DELAY_MS);
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| StorageError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        // Fail at start rather than at the first RPC when the server is not Redis-compatible.
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| match StorageError::from(e) {
                StorageError::Unavailable(m) => {
                    StorageError::Unavailable(format!("redis at {url} failed PING: {m}"))
                }
                StorageError::Backend(m) => {
                    StorageError::Backend(format!("redis at {url} failed PING: {m}"))
                }
                other => other,
            })?;
        if pong != "PONG" {
            return Err(StorageError::Backend(format!(
                "unexpected PING reply {pong:?} from {url}"
            )));
        }
        Ok(conn)
    }

    fn hash_key(&self, table: &str) -> String {
        format!("{}{}", self.prefix, table)
    }
}

#[async_trait]
impl Storage for RedisStorage {
    async fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<bool, StorageError> {
        let mut conn = self.conn.clone();
        let added: usize = redis::cmd("HSET")
            .arg(self.hash_key(table))
            .arg(key)
            .arg(value)
            .query_async(&mut conn)
            .await?;
        Ok(added > 0)
    }

    async fn put_if_absent(
        &self,
        table: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, StorageError> {
        let mut conn = self.conn.clone();
        let set: bool = redis::cmd("HSETNX")
            .arg(self.hash_key(table))
            .arg(key)
            .arg(value)
            .query_async(&mut conn)
            .await?;
        Ok(set)
    }

    async fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.hash_key(table))
            .arg(key)
            .query_async(&mut conn)
            .await?;
        Ok(v)
    }

    async fn exists(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        let mut conn = self.conn.clone();
        let v: bool = redis::cmd("HEXISTS")
            .arg(self.hash_key(table))
            .arg(key)
            .query_async(&mut conn)
            .await?;
        Ok(v)
    }

    async fn delete(&self, table: &str, key: &[u8]) -> Result<bool, StorageError> {
        let mut conn = self.conn.clone();
        let removed: usize = redis::cmd("HDEL")
            .arg(self.hash_key(table))
            .arg(key)
            .query_async(&mut conn)
            .await?;
        Ok(removed > 0)
    }

    async fn get_all(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let mut conn = self.conn.clone();
        // A map decodes both the RESP2 flat array and the RESP3 map reply.
        let all: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.hash_key(table))
            .query_async(&mut conn)
            .await?;
        Ok(all.into_iter().collect())
    }

    async fn keys_with_prefix(
        &self,
        table: &str,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut conn = self.conn.clone();
        // Filtered here rather than with HSCAN MATCH: glob-escaping arbitrary bytes is
        // error-prone, and KV namespaces are small.
        let keys: Vec<Vec<u8>> = redis::cmd("HKEYS")
            .arg(self.hash_key(table))
            .query_async(&mut conn)
            .await?;
        let mut keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
        keys.sort();
        Ok(keys)
    }
}
