//! The SOURCE of a mount: which store to open.
//!
//! - `aws:REGION/TABLE`: DynamoDB tables `TABLE` and `TABLEBlocks` in `REGION`
//!   (or at the endpoint given by `-o endpoint=` or `AWS_ENDPOINT_URL_DYNAMODB`);
//! - `local:PATH`: the embedded store, one file at `PATH`, shared by the processes of
//!   one machine.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::retry::Patience;
use crate::store::dynamo::{Billing, DynamoConfig, DynamoStore};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};

/// Where the filesystem lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// DynamoDB tables `table` and `table` + `Blocks` in `region`.
    Aws {
        /// AWS region.
        region: String,
        /// Metadata table name.
        table: String,
    },
    /// The embedded store file.
    Local {
        /// Path of the store file.
        path: PathBuf,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Aws { region, table } => write!(f, "aws:{region}/{table}"),
            Source::Local { path } => write!(f, "local:{}", path.display()),
        }
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("aws:") {
            let (region, table) = rest.split_once('/').ok_or_else(|| {
                format!(
                    "malformed source '{s}': expected aws:REGION/TABLE, e.g. aws:us-east-1/Shared"
                )
            })?;
            if region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!("malformed source '{s}': region '{region}' is not a region name such as us-east-1"));
            }
            // DynamoDB allows 3..=255 characters; "Blocks" is appended for the data table.
            let valid_chars = table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !(3..=249).contains(&table.len()) || !valid_chars {
                return Err(format!(
                    "malformed source '{s}': table name '{table}' must be 3 to 249 characters of letters, digits, '_', '-' and '.'"
                ));
            }
            return Ok(Source::Aws {
                region: region.to_string(),
                table: table.to_string(),
            });
        }
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(format!("malformed source '{s}': expected local:PATH"));
            }
            // Absolute now: a daemonized mount runs in `/`.
            let path =
                std::path::absolute(path).map_err(|e| format!("malformed source '{s}': {e}"))?;
            return Ok(Source::Local { path });
        }
        Err(format!(
            "malformed source '{s}': expected aws:REGION/TABLE or local:PATH"
        ))
    }
}

impl Source {
    /// Open the store this source names; `create` makes missing tables (billed so)
    /// or the file.
    pub async fn open(
        &self,
        endpoint: Option<String>,
        patience: Patience,
        create: Option<Billing>,
    ) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Source::Aws { region, table } => {
                let config = DynamoConfig {
                    region: region.clone(),
                    table: table.clone(),
                    endpoint,
                    patience,
                    create_tables: create,
                };
                Arc::new(DynamoStore::connect(&config).await?)
            }
            Source::Local { path } if create.is_none() && !path.exists() => {
                return Err(StoreError::NotFound(format!(
                    "{} does not exist",
                    path.display()
                )))
            }
            Source::Local { path } => Arc::new(EmbeddedStore::open(path)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_sources() {
        assert_eq!(
            "aws:us-east-1/Shared".parse::<Source>(),
            Ok(Source::Aws {
                region: "us-east-1".into(),
                table: "Shared".into()
            })
        );
        assert_eq!(
            "local:/tmp/x.db".parse::<Source>(),
            Ok(Source::Local {
                path: "/tmp/x.db".into()
            })
        );
        assert_eq!(
            "local:data/x.db".parse::<Source>(),
            Ok(Source::Local {
                path: std::env::current_dir().unwrap().join("data/x.db")
            })
        );
        for bad in [
            "aws:us-east-1",
            "aws:/T",
            "aws:us-east-1/ab",
            "aws:us-east-1/a b c",
            "s3:bucket",
            "local:",
            "/tmp/x",
        ] {
            let err = bad.parse::<Source>().unwrap_err();
            assert!(err.contains("malformed source"), "{bad}: {err}");
        }
    }
}
