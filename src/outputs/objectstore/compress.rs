//! Body compression for object stores: gzip (flate2 with the zlib-rs backend) or zstd. Each
//! upload is one gzip member / zstd frame, so appended uploads stay a valid concatenated stream.

use std::io::{Read, Write};
use std::path::Path;

/// zlib-rs level 5 (its "medium" matcher with 32-entry chains). Measured on JSON Lines from
/// container logs: 2.5x the speed of level 6 for 1.06x the size, which keeps objects within 5 %
/// of Fluent Bit's (whose level-6 output is itself 1.5 % larger than zlib-rs's).
const GZIP_LEVEL: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// Streams `src` into `dst` compressed (bounded memory), fsyncs `dst`; returns its size.
    pub fn compress_file(self, src: &Path, dst: &Path) -> std::io::Result<u64> {
        let mut input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(src)?);
        let out = std::fs::File::create(dst)?;
        let out = match self {
            Compression::None => {
                let mut w = std::io::BufWriter::new(out);
                std::io::copy(&mut input, &mut w)?;
                w.into_inner().map_err(|e| e.into_error())?
            }
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    std::io::BufWriter::new(out),
                    flate2::Compression::new(GZIP_LEVEL),
                );
                copy_all(&mut input, &mut enc)?;
                enc.finish()?.into_inner().map_err(|e| e.into_error())?
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(out), 3)?;
                copy_all(&mut input, &mut enc)?;
                enc.finish()?.into_inner().map_err(|e| e.into_error())?
            }
        };
        out.sync_all()?;
        Ok(out.metadata()?.len())
    }
}

fn copy_all(r: &mut impl Read, w: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n])?;
    }
}
