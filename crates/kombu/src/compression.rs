//! Body compression, with Kombu's header values (`headers["compression"]`).
//!
//! | aliases | header value | format | feature |
//! |---|---|---|---|
//! | `zlib`, `gzip` | `application/x-gzip` | **zlib stream (RFC 1950)**, as Kombu | always |
//! | `bzip2`, `bzip` | `application/x-bz2` | bzip2 | `bzip2` |
//! | `xz`, `lzma` | `application/x-lzma` | xz container | `xz` |
//! | `brotli` | `application/x-brotli` | brotli | `brotli` |
//! | `zstd`, `zstandard` | `application/zstd` | zstd frame | `zstd` |
//!
//! Decompression is bounded ([`DEFAULT_MAX_DECOMPRESSED`]) so a small malicious message cannot
//! expand into gigabytes: past the bound, a [`ErrorKind::LimitExceeded`] error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock, RwLock};

use kombu_core::{Error, ErrorKind, Result};

/// The header that names the compression of a body.
pub const HEADER: &str = "compression";

/// Default bound on a decompressed body: 256 MiB.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 256 * 1024 * 1024;

/// A body compressor.
pub trait Compressor: Send + Sync + 'static {
    /// The header value (`application/x-gzip`).
    fn content_type(&self) -> &str;
    /// Names it is known by (`["zlib", "gzip"]`).
    fn aliases(&self) -> &[&str];
    /// Compress.
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>>;
    /// Decompress at most `limit` bytes.
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>>;
}

fn compress_error(name: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Encode, format!("{name} compression failed")).with_source(e)
}

/// Read a decompressing reader to its end, failing past `limit` bytes.
fn read_bounded(name: &str, reader: impl Read, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut limited = reader.take(limit as u64 + 1);
    limited
        .read_to_end(&mut out)
        .map_err(|e| Error::new(ErrorKind::Decode, format!("{name} decompression failed")).with_source(e))?;
    if out.len() > limit {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("decompressed body exceeds {limit} bytes"),
        )
        .with_context("compression", name));
    }
    Ok(out)
}

/// zlib (Kombu's `zlib`/`gzip`, header `application/x-gzip`).
#[derive(Debug, Default)]
pub struct Zlib;

impl Compressor for Zlib {
    fn content_type(&self) -> &str {
        "application/x-gzip"
    }
    fn aliases(&self) -> &[&str] {
        &["zlib", "gzip"]
    }
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).map_err(|e| compress_error("zlib", e))?;
        enc.finish().map_err(|e| compress_error("zlib", e))
    }
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded("zlib", flate2::read::ZlibDecoder::new(data), limit)
    }
}

/// bzip2.
#[cfg(feature = "bzip2")]
#[derive(Debug, Default)]
pub struct Bzip2;

#[cfg(feature = "bzip2")]
impl Compressor for Bzip2 {
    fn content_type(&self) -> &str {
        "application/x-bz2"
    }
    fn aliases(&self) -> &[&str] {
        &["bzip2", "bzip"]
    }
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        enc.write_all(data).map_err(|e| compress_error("bzip2", e))?;
        enc.finish().map_err(|e| compress_error("bzip2", e))
    }
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded("bzip2", bzip2::read::BzDecoder::new(data), limit)
    }
}

/// xz (Kombu's `lzma`/`xz`: Python's `lzma.compress`, the xz container).
#[cfg(feature = "xz")]
#[derive(Debug, Default)]
pub struct Xz;

#[cfg(feature = "xz")]
impl Compressor for Xz {
    fn content_type(&self) -> &str {
        "application/x-lzma"
    }
    fn aliases(&self) -> &[&str] {
        &["xz", "lzma"]
    }
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(data).map_err(|e| compress_error("xz", e))?;
        enc.finish().map_err(|e| compress_error("xz", e))
    }
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded("xz", liblzma::read::XzDecoder::new(data), limit)
    }
}

/// brotli.
#[cfg(feature = "brotli")]
#[derive(Debug, Default)]
pub struct Brotli;

#[cfg(feature = "brotli")]
impl Compressor for Brotli {
    fn content_type(&self) -> &str {
        "application/x-brotli"
    }
    fn aliases(&self) -> &[&str] {
        &["brotli"]
    }
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
            enc.write_all(data).map_err(|e| compress_error("brotli", e))?;
            enc.flush().map_err(|e| compress_error("brotli", e))?;
        }
        Ok(out)
    }
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        read_bounded("brotli", brotli::Decompressor::new(data, 4096), limit)
    }
}

/// zstd.
#[cfg(feature = "zstd")]
#[derive(Debug, Default)]
pub struct Zstd;

#[cfg(feature = "zstd")]
impl Compressor for Zstd {
    fn content_type(&self) -> &str {
        "application/zstd"
    }
    fn aliases(&self) -> &[&str] {
        &["zstd", "zstandard"]
    }
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        zstd::stream::encode_all(data, 3).map_err(|e| compress_error("zstd", e))
    }
    fn decompress(&self, data: &[u8], limit: usize) -> Result<Vec<u8>> {
        let decoder = zstd::stream::read::Decoder::new(data)
            .map_err(|e| Error::new(ErrorKind::Decode, "zstd decompression failed").with_source(e))?;
        read_bounded("zstd", decoder, limit)
    }
}

fn registry() -> &'static RwLock<HashMap<String, Arc<dyn Compressor>>> {
    static REGISTRY: OnceLock<RwLock<HashMap<String, Arc<dyn Compressor>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let builtins: Vec<Arc<dyn Compressor>> = vec![
            Arc::new(Zlib),
            #[cfg(feature = "bzip2")]
            Arc::new(Bzip2),
            #[cfg(feature = "xz")]
            Arc::new(Xz),
            #[cfg(feature = "brotli")]
            Arc::new(Brotli),
            #[cfg(feature = "zstd")]
            Arc::new(Zstd),
        ];
        let mut map = HashMap::new();
        for c in builtins {
            insert(&mut map, c);
        }
        RwLock::new(map)
    })
}

fn insert(map: &mut HashMap<String, Arc<dyn Compressor>>, c: Arc<dyn Compressor>) {
    map.insert(c.content_type().to_owned(), c.clone());
    for alias in c.aliases() {
        map.insert((*alias).to_owned(), c.clone());
    }
}

/// Register (or replace) a compressor under its content type and aliases.
pub fn register(compressor: Arc<dyn Compressor>) {
    insert(
        &mut registry().write().unwrap_or_else(|p| p.into_inner()),
        compressor,
    );
}

/// The compressor known by `alias_or_content_type`.
pub fn get(alias_or_content_type: &str) -> Result<Arc<dyn Compressor>> {
    let map = registry().read().unwrap_or_else(|p| p.into_inner());
    map.get(alias_or_content_type).cloned().ok_or_else(|| {
        let mut names: Vec<&str> = map
            .keys()
            .filter(|k| !k.contains('/'))
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        Error::new(
            ErrorKind::SerializerNotInstalled,
            format!(
                "no compression {alias_or_content_type:?} (registered: {}); bzip2, xz, brotli and zstd \
                 need the features of the same names of the kombu crate",
                names.join(", ")
            ),
        )
    })
}

/// Compress with `alias_or_content_type` → `(bytes, header value)`.
pub fn compress(data: &[u8], alias_or_content_type: &str) -> Result<(Vec<u8>, String)> {
    let c = get(alias_or_content_type)?;
    Ok((c.compress(data)?, c.content_type().to_owned()))
}

/// Decompress a body whose header says `content_type`, bounded by `limit` bytes.
pub fn decompress(data: &[u8], content_type: &str, limit: usize) -> Result<Vec<u8>> {
    get(content_type)?.decompress(data, limit)
}

/// The registered compression names (aliases), sorted.
pub fn names() -> Vec<String> {
    let map = registry().read().unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<String> = map.keys().filter(|k| !k.contains('/')).cloned().collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_is_rfc1950_under_the_gzip_header() {
        let (body, header) = compress(b"hello hello hello", "gzip").unwrap();
        assert_eq!(header, "application/x-gzip");
        assert_eq!(body[0], 0x78, "zlib stream header, not gzip's 0x1f 0x8b");
        assert_eq!(decompress(&body, &header, 100).unwrap(), b"hello hello hello");
    }

    #[test]
    fn decompression_is_bounded() {
        let (body, header) = compress(&vec![0u8; 10_000], "zlib").unwrap();
        let err = decompress(&body, &header, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        let err = decompress(b"garbage", &header, 1000).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
