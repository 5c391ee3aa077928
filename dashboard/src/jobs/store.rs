//! Job records and output in the GCS's key-value store (namespace `jobs`), so they live as
//! long as the GCS's tables do: through a head restart when the GCS writes through to Redis.
//!
//! Keys: `record/<id>` holds a [`JobRecord`] as JSON; `log/<id>/<seq>` holds one chunk of
//! the job's output, `seq` counting from 0 and written as 12 digits so keys sort in order.

use miniray_common::auth::AuthedChannel;
use miniray_proto::gcs_client::GcsClient;
use miniray_proto::{KvDelRequest, KvGetRequest, KvKeysRequest, KvPutRequest};
use tonic::Status;

use super::record::JobRecord;

const NAMESPACE: &str = "jobs";

fn record_key(id: &str) -> Vec<u8> {
    format!("record/{id}").into_bytes()
}

fn log_prefix(id: &str) -> String {
    format!("log/{id}/")
}

fn log_key(id: &str, seq: u64) -> Vec<u8> {
    format!("{}{seq:012}", log_prefix(id)).into_bytes()
}

/// The GCS side of jobs; cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    gcs: GcsClient<AuthedChannel>,
}

impl JobStore {
    pub fn new(gcs: GcsClient<AuthedChannel>) -> Self {
        JobStore { gcs }
    }

    fn encode(record: &JobRecord) -> Vec<u8> {
        // A record is plain data: serializing it cannot fail.
        serde_json::to_vec(record).unwrap_or_default()
    }

    async fn put_raw(&self, key: Vec<u8>, value: Vec<u8>, overwrite: bool) -> Result<bool, Status> {
        let reply = self
            .gcs
            .clone()
            .kv_put(KvPutRequest {
                ns: NAMESPACE.into(),
                key,
                value,
                overwrite,
            })
            .await?;
        Ok(reply.into_inner().added)
    }

    /// Adds a new record; false if one with its id exists.
    pub async fn add(&self, record: &JobRecord) -> Result<bool, Status> {
        self.put_raw(
            record_key(&record.submission_id),
            Self::encode(record),
            false,
        )
        .await
    }

    /// Writes a record over the one of its id.
    pub async fn put(&self, record: &JobRecord) -> Result<(), Status> {
        self.put_raw(
            record_key(&record.submission_id),
            Self::encode(record),
            true,
        )
        .await
        .map(|_| ())
    }

    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>, Status> {
        let reply = self
            .gcs
            .clone()
            .kv_get(KvGetRequest {
                ns: NAMESPACE.into(),
                key: record_key(id),
            })
            .await?
            .into_inner();
        if !reply.found {
            return Ok(None);
        }
        serde_json::from_slice(&reply.value)
            .map(Some)
            .map_err(|e| Status::data_loss(format!("the record of job {id} is unreadable: {e}")))
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, Status> {
        let reply = self
            .gcs
            .clone()
            .kv_keys(KvKeysRequest {
                ns: NAMESPACE.into(),
                prefix: prefix.as_bytes().to_vec(),
            })
            .await?
            .into_inner();
        let mut keys: Vec<String> = reply
            .keys
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every record, oldest submission first. A record that cannot be read is skipped (and
    /// logged) rather than hiding the others.
    pub async fn list(&self) -> Result<Vec<JobRecord>, Status> {
        let mut records = Vec::new();
        for key in self.keys("record/").await? {
            let id = key.trim_start_matches("record/");
            match self.get(id).await {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(job = id, error = %e.message(), "skipping a job record"),
            }
        }
        records.sort_by(|a, b| {
            a.start_time
                .cmp(&b.start_time)
                .then_with(|| a.submission_id.cmp(&b.submission_id))
        });
        Ok(records)
    }

    pub async fn put_log_chunk(&self, id: &str, seq: u64, bytes: Vec<u8>) -> Result<(), Status> {
        self.put_raw(log_key(id, seq), bytes, true)
            .await
            .map(|_| ())
    }

    pub async fn delete_log_chunk(&self, id: &str, seq: u64) -> Result<(), Status> {
        self.gcs
            .clone()
            .kv_del(KvDelRequest {
                ns: NAMESPACE.into(),
                key: log_key(id, seq),
            })
            .await
            .map(|_| ())
    }

    /// Sequence numbers of the job's kept output chunks, in order.
    pub async fn log_chunks(&self, id: &str) -> Result<Vec<u64>, Status> {
        let prefix = log_prefix(id);
        Ok(self
            .keys(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
            .collect())
    }

    /// The kept output chunks numbered `from` and later, in order.
    pub async fn read_log(&self, id: &str, from: u64) -> Result<Vec<(u64, Vec<u8>)>, Status> {
        let mut out = Vec::new();
        for seq in self
            .log_chunks(id)
            .await?
            .into_iter()
            .filter(|s| *s >= from)
        {
            let reply = self
                .gcs
                .clone()
                .kv_get(KvGetRequest {
                    ns: NAMESPACE.into(),
                    key: log_key(id, seq),
                })
                .await?
                .into_inner();
            if reply.found {
                out.push((seq, reply.value));
            }
        }
        Ok(out)
    }

    /// Removes a record and its output.
    pub async fn delete(&self, id: &str) -> Result<(), Status> {
        for seq in self.log_chunks(id).await? {
            self.delete_log_chunk(id, seq).await?;
        }
        self.gcs
            .clone()
            .kv_del(KvDelRequest {
                ns: NAMESPACE.into(),
                key: record_key(id),
            })
            .await
            .map(|_| ())
    }
}
