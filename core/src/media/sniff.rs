//! A file's real type from its first bytes, whatever name or MIME type it was uploaded with.

use super::Kind;

/// Bytes of the object's start that [`sniff`] needs.
pub const SNIFF_LEN: usize = 512;

/// What the first bytes say: a MIME type and a short name for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub mime: &'static str,
    pub label: &'static str,
    pub kind: Kind,
}

impl Sniffed {
    /// The FFmpeg demuxer that reads this type (a name of its `name` list), the only one FFmpeg
    /// may use on it: never a playlist (`hls`), script (`concat`) or pattern (`image2`) demuxer
    /// that would open other files or URLs the content names. `None`: not read through FFmpeg.
    pub fn demuxer(&self) -> Option<&'static str> {
        Some(match self.mime {
            "video/mp4" | "video/quicktime" | "audio/mp4" => "mov",
            "video/webm" | "video/x-matroska" => "matroska",
            "video/x-msvideo" => "avi",
            "video/mp2t" => "mpegts",
            "audio/mpeg" => "mp3",
            "audio/ogg" => "ogg",
            "audio/flac" => "flac",
            "audio/wav" => "wav",
            "image/jpeg" => "jpeg_pipe",
            _ => return None,
        })
    }
}

const fn s(mime: &'static str, label: &'static str, kind: Kind) -> Sniffed {
    Sniffed { mime, label, kind }
}

/// The type the bytes show, or `None` when they match no type Lectern accepts.
pub fn sniff(head: &[u8]) -> Option<Sniffed> {
    let at = |i: usize, sig: &[u8]| head.get(i..i + sig.len()) == Some(sig);
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Some(s("image/png", "PNG image", Kind::Image));
    }
    if at(0, b"\xff\xd8\xff") {
        return Some(s("image/jpeg", "JPEG image", Kind::Image));
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some(s("image/gif", "GIF image", Kind::Image));
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Some(s("image/webp", "WebP image", Kind::Image));
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return Some(s("video/x-msvideo", "AVI video", Kind::Video));
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return Some(s("audio/wav", "WAV audio", Kind::Audio));
    }
    if at(4, b"ftyp") {
        let brand = head.get(8..12).unwrap_or_default();
        return Some(match brand {
            b"qt  " => s("video/quicktime", "QuickTime video", Kind::Video),
            b"M4A " | b"M4B " => s("audio/mp4", "MPEG-4 audio", Kind::Audio),
            b"avif" | b"avis" | b"heic" | b"heix" | b"mif1" => {
                s("image/heif", "HEIF/AVIF image", Kind::Image)
            }
            _ => s("video/mp4", "MPEG-4 video", Kind::Video),
        });
    }
    // QuickTime files without ftyp start with another top-level atom.
    if at(4, b"moov") || at(4, b"mdat") || at(4, b"wide") || at(4, b"free") {
        return Some(s("video/quicktime", "QuickTime video", Kind::Video));
    }
    if at(0, b"\x1a\x45\xdf\xa3") {
        let webm = head.windows(4).any(|w| w == b"webm");
        return Some(if webm {
            s("video/webm", "WebM video", Kind::Video)
        } else {
            s("video/x-matroska", "Matroska video", Kind::Video)
        });
    }
    if at(0, b"\x47") && at(188, b"\x47") && at(376, b"\x47") {
        // MPEG-TS: a sync byte every 188 bytes.
        return Some(s("video/mp2t", "MPEG-TS video", Kind::Video));
    }
    if at(0, b"ID3") || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0) {
        return Some(s("audio/mpeg", "MP3 audio", Kind::Audio));
    }
    if at(0, b"OggS") {
        return Some(s("audio/ogg", "Ogg audio", Kind::Audio));
    }
    if at(0, b"fLaC") {
        return Some(s("audio/flac", "FLAC audio", Kind::Audio));
    }
    if at(0, b"%PDF-") {
        return Some(s("application/pdf", "PDF document", Kind::Document));
    }
    if at(0, b"PK\x03\x04") {
        return Some(s("application/zip", "ZIP-based document", Kind::Document));
    }
    None
}

/// Whether content of type `sniffed` may be stored as `declared` (a MIME type of the allow-list).
/// The kinds must agree, and images must be the very format declared (browsers and the image
/// decoder rely on it); containers of the same kind are interchangeable for FFmpeg.
pub fn compatible(declared: &str, sniffed: &Sniffed, declared_kind: Kind) -> bool {
    if sniffed.kind != declared_kind {
        return false;
    }
    match declared_kind {
        Kind::Image => sniffed.mime == declared,
        Kind::Document => {
            sniffed.mime == declared
                || (sniffed.mime == "application/zip" && declared.starts_with("application/vnd."))
        }
        Kind::Video | Kind::Audio => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    }

    /// A valid PNG header claiming `w` × `h` (a decompression bomb for the limits), a few bytes.
    pub(crate) fn png_bomb(w: u32, h: u32) -> Vec<u8> {
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        // A tiny zlib stream of zeros (stored block): far too short for the claimed size.
        let idat = [
            0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
        ];
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &idat));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn magic_numbers_decide_the_type() {
        let png = png_bomb(1, 1);
        assert_eq!(sniff(&png).map(|s| s.mime), Some("image/png"));
        let mp4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41";
        assert_eq!(sniff(mp4).map(|s| s.kind), Some(Kind::Video));
        assert_eq!(sniff(b"%PDF-1.7\n").map(|s| s.kind), Some(Kind::Document));
        assert_eq!(sniff(b"hello world, not media"), None);
        let sniffed = sniff(&png).expect("png");
        assert!(!compatible("video/mp4", &sniffed, Kind::Video));
        assert!(!compatible("image/jpeg", &sniffed, Kind::Image));
        assert!(compatible("image/png", &sniffed, Kind::Image));
    }
}
