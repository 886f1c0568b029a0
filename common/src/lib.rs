//! Pieces shared by the sluice coordinator, worker and CLI: the table schema and
//! row model, ids, pipeline settings, storage access, the coordinator/worker link
//! traits, exactly-once commit helpers and the error ledger.

pub mod attributes;
pub mod error;
pub mod failpoint;
pub mod samples;
pub mod describe;
pub mod ids;
pub mod insert;
pub mod ledger;
pub mod query;
pub mod retry;
pub mod meta;
pub mod protocol;
pub mod schema;
pub mod settings;
pub mod sql;
pub mod sources;
pub mod storage;
pub mod table;
pub mod tls;

pub use error::{Error, Result};
pub use sluice_proto::v1 as pb;
