//! Body compression for object stores: gzip (flate2 with the zlib-rs backend) or zstd. Each
//! upload is one gzip member / zstd frame, so appended uploads stay a valid concatenated stream.

use std::io::{Read, Write};
use std::path::Path;

use super::spool::BodyInfo;

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

    /// Streams `src` into `dst` compressed (bounded memory), fsyncs `dst`; returns its size
    /// and the records (lines) in it. Runs on a blocking thread.
    pub fn compress_file(self, src: &Path, dst: &Path) -> std::io::Result<BodyInfo> {
        let mut input = std::fs::File::open(src)?;
        let out = std::io::BufWriter::new(std::fs::File::create(dst)?);
        let (out, records) = match self {
            Compression::None => {
                let mut w = out;
                let records = copy_counting(&mut input, &mut w)?;
                (w.into_inner().map_err(|e| e.into_error())?, records)
            }
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
                let records = copy_counting(&mut input, &mut enc)?;
                let w = enc.finish()?;
                (w.into_inner().map_err(|e| e.into_error())?, records)
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
                let records = copy_counting(&mut input, &mut enc)?;
                let w = enc.finish()?;
                (w.into_inner().map_err(|e| e.into_error())?, records)
            }
        };
        out.sync_all()?;
        Ok(BodyInfo {
            size: out.metadata()?.len(),
            records,
        })
    }
}

/// Copies `r` to `w`; returns the newlines seen (one per record).
fn copy_counting(r: &mut impl Read, w: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut lines = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        w.write_all(&buf[..n])?;
    }
}
