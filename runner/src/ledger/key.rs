//! The host key that signs finished runs: an ed25519 key in the data
//! directory (`ledger.key`, the 32 secret bytes, mode 0600), made on first
//! use. It never leaves the host: no sandbox mounts the data directory's
//! root, and [`HostKey`]'s `Debug` shows only the public half.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "ledger.key";

/// Why the host key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("host key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not 32 bytes, or not a regular file.
    #[error("host key {path} is malformed: {why}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Others than the owner may read the file: the key may have leaked.
    #[error(
        "host key {path} is readable by others (mode {mode:o}); `chmod 600` it if it did not leak, \
         or move it away to make a new one (runs it signed then verify only with its public key)"
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The host's signing key.
pub struct HostKey {
    signing: SigningKey,
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public().to_string())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// The key in `dir` (made, 0600, if there is none yet).
    pub fn load_or_create(dir: &Path) -> Result<HostKey, KeyError> {
        let path = dir.join(KEY_FILE);
        match Self::load(&path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Self::create(dir, &path)
            }
            other => other,
        }
    }

    /// The key at `path`, which must exist.
    pub fn load(path: &Path) -> Result<HostKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        if !meta.file_type().is_file() {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                why: "not a regular file".into(),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let secret: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| KeyError::Malformed {
            path: path.to_path_buf(),
            why: format!("{} bytes, not 32", b.len()),
        })?;
        Ok(HostKey {
            signing: SigningKey::from_bytes(&secret),
        })
    }

    /// Makes a key: written 0600 to a temporary file, then linked into
    /// place, so a concurrent process never reads half a key and two
    /// processes starting together end up with the same one.
    fn create(dir: &Path, path: &Path) -> Result<HostKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let secret: [u8; 32] = rand::random();
        let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let _ = std::fs::remove_file(&tmp);
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(&secret)?;
            f.sync_all()
        });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "made the ledger's host key");
                Ok(HostKey {
                    signing: SigningKey::from_bytes(&secret),
                })
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// A key from its secret bytes (tests and tools).
    pub fn from_secret(secret: [u8; 32]) -> HostKey {
        HostKey {
            signing: SigningKey::from_bytes(&secret),
        }
    }

    /// The public half, to verify with.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// A host's public key, written `ed25519:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// True if `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify(message, &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;

    /// `ed25519:<hex>` (the prefix may be left out).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim();
        let digits = digits.strip_prefix("ed25519:").unwrap_or(digits);
        let bytes: [u8; 32] = hex::decode(digits)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                "a public key is ed25519: and 64 hex digits (`kiln runs pubkey` prints it)"
                    .to_string()
            })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| "not an ed25519 public key (not a point on the curve)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_owner_only_and_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let made = HostKey::load_or_create(dir.path()).expect("make");
        let again = HostKey::load_or_create(dir.path()).expect("load");
        assert_eq!(made.public(), again.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let debug = format!("{made:?}");
        assert!(
            debug.contains("ed25519:") && !debug.contains("signing"),
            "{debug}"
        );
    }

    #[test]
    fn exposed_or_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        HostKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = HostKey::load_or_create(dir.path()).unwrap_err();
            assert!(
                matches!(err, KeyError::Exposed { mode: 0o644, .. }),
                "{err}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, b"short").unwrap();
        let err = HostKey::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("5 bytes, not 32"), "{err}");
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = HostKey::from_secret([1; 32]);
        let b = HostKey::from_secret([2; 32]);
        let sig = a.sign(b"head");
        assert!(a.public().verify(b"head", &sig));
        assert!(!a.public().verify(b"heaD", &sig));
        assert!(!b.public().verify(b"head", &sig));
        assert!(!a.public().verify(b"head", &sig[..63]));
        let text = a.public().to_string();
        assert_eq!(text.parse::<PublicKey>(), Ok(a.public()));
        assert_eq!(
            text["ed25519:".len()..].parse::<PublicKey>(),
            Ok(a.public())
        );
        for bad in ["", "ed25519:", "ed25519:zz", &"0".repeat(63)] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?}");
        }
    }
}
