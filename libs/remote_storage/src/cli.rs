//! The command-line options that select object storage, shared by every
//! component that uses it (pageserver: layers and indexes; safekeeper: WAL
//! segments), so the flags, their environment variable and their checks
//! are the same everywhere. Flatten [`RemoteStorageArgs`] into a `clap`
//! parser and call [`RemoteStorageArgs::open`].

use crate::{ConfigError, GenericRemoteStorage, RemoteStorageConfig};

/// `--remote-storage LOCATION [--s3-endpoint URL] [--s3-region REGION]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RemoteStorageArgs {
    /// Object storage: a directory, or s3://BUCKET/PREFIX (credentials from
    /// the AWS_* variables). The pageserver keeps layer files and indexes
    /// there, safekeepers offload whole WAL segments; give every component
    /// of a cluster the same one. Without it, local disks are the only copy.
    #[arg(long, env = "STRATA_REMOTE_STORAGE")]
    pub remote_storage: Option<String>,
    /// S3 endpoint URL (for S3-compatible servers).
    #[arg(long, requires = "remote_storage")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, requires = "remote_storage")]
    pub s3_region: Option<String>,
}

impl RemoteStorageArgs {
    /// The configured storage, or `None` without `--remote-storage`.
    pub fn open(&self) -> Result<Option<GenericRemoteStorage>, ConfigError> {
        let Some(location) = &self.remote_storage else { return Ok(None) };
        let mut config = RemoteStorageConfig::parse_location(location)?;
        config.set_s3_options(self.s3_endpoint.clone(), self.s3_region.clone())?;
        let storage = GenericRemoteStorage::new(&config)?;
        tracing::info!(%location, "remote storage configured");
        Ok(Some(storage))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        remote: RemoteStorageArgs,
    }

    #[test]
    fn s3_options_need_a_location_and_fit_only_s3() {
        assert!(Cli::try_parse_from(["x", "--s3-region", "eu"]).is_err(), "--s3-region alone");
        let local = Cli::try_parse_from(["x", "--remote-storage", "/tmp/r", "--s3-region", "eu"]).unwrap();
        assert!(matches!(local.remote.open(), Err(ConfigError::Option(_))));
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert!(none.remote.open().unwrap().is_none());
        let bad = Cli::try_parse_from(["x", "--remote-storage", "gs://b"]).unwrap();
        assert!(matches!(bad.remote.open(), Err(ConfigError::Location { .. })));
    }
}
