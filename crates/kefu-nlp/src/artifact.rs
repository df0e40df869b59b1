//! The stored form of a trained model: a magic tag, then the model in postcard. A model
//! of another version is refused, so that a cached or bundled model is never misread.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) trait Artifact: Serialize + DeserializeOwned {
    /// Leads the bytes, so that other data is refused before it is decoded.
    const MAGIC: &'static [u8];
    /// The version this build writes and reads.
    const VERSION: &'static str;
    /// Names the model in errors.
    const NAME: &'static str;

    /// The version the model was written by.
    fn version(&self) -> &str;
}

pub(crate) fn to_bytes<A: Artifact>(model: &A) -> Vec<u8> {
    let mut out = A::MAGIC.to_vec();
    out.extend(postcard::to_allocvec(model).unwrap_or_default());
    out
}

pub(crate) fn from_bytes<A: Artifact>(bytes: &[u8]) -> Result<A> {
    let body = bytes
        .strip_prefix(A::MAGIC)
        .ok_or_else(|| anyhow!("not a kefu {}", A::NAME))?;
    let model: A =
        postcard::from_bytes(body).with_context(|| format!("decoding the {}", A::NAME))?;
    if model.version() != A::VERSION {
        bail!(
            "{} version {} (expected {})",
            A::NAME,
            model.version(),
            A::VERSION
        );
    }
    Ok(model)
}
