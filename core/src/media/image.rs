//! Image processing with the `image` crate: decode under limits that stop decompression bombs,
//! apply the EXIF orientation, and make a 300 × 300 thumbnail and a larger preview, as JPEG and
//! WebP. Large JPEGs are decoded at reduced scale in the DCT domain (FFmpeg's `lowres`), so a
//! 24-megapixel photo never becomes 24 million pixels in memory.
//!
//! Blocking and CPU-bound: call it from `spawn_blocking`.

use std::io::BufWriter;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use super::MediaError;

/// Bounds checked on the header, before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_width: 16_384,
            max_height: 16_384,
            max_pixels: 50_000_000,
        }
    }
}

pub const THUMBNAIL_SIDE: u32 = 300;
pub const PREVIEW_SIDE: u32 = 1280;

/// What the image job made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageOutput {
    /// The source's size as displayed (after the EXIF orientation).
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub thumbnail: (u32, u32),
    pub preview: (u32, u32),
    /// 1 when decoded at full size; 2, 4 or 8 when decoded at reduced scale.
    pub decode_scale: u32,
}

/// Header only: format and size, with the limits checked.
pub fn inspect(path: &Path, limits: &ImageLimits) -> Result<(ImageFormat, u32, u32), MediaError> {
    let reader = ImageReader::open(path)
        .map_err(MediaError::io)?
        .with_guessed_format()
        .map_err(MediaError::io)?;
    let format = reader
        .format()
        .ok_or_else(|| MediaError::Invalid("the file is not an image format we read".into()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| MediaError::Invalid(format!("the image header cannot be read: {e}")))?;
    check_limits(w, h, limits)?;
    Ok((format, w, h))
}

fn check_limits(w: u32, h: u32, limits: &ImageLimits) -> Result<(), MediaError> {
    if w == 0 || h == 0 {
        return Err(MediaError::Invalid("the image has no pixels".into()));
    }
    if w > limits.max_width
        || h > limits.max_height
        || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(MediaError::Invalid(format!(
            "the image is {w} × {h} pixels; the largest accepted is {} × {} and {} megapixels",
            limits.max_width,
            limits.max_height,
            limits.max_pixels / 1_000_000
        )));
    }
    Ok(())
}

/// A decoded picture, upright, at least `min_side` on its long side where the source allows.
pub struct Decoded {
    pub image: DynamicImage,
    pub format: ImageFormat,
    /// The source's size as displayed (after the EXIF orientation).
    pub width: u32,
    pub height: u32,
    /// 1 when decoded at full size; 2, 4 or 8 when decoded at reduced scale.
    pub scale: u32,
}

/// Decodes `path` under `limits` (checked on the header first) and applies the EXIF
/// orientation. A JPEG is decoded at the largest reduction (1/2, 1/4, 1/8, in the DCT domain)
/// that still gives `min_side` pixels on the long side.
pub fn decode(path: &Path, limits: &ImageLimits, min_side: u32) -> Result<Decoded, MediaError> {
    let (format, w, h) = inspect(path, limits)?;
    let mut decoder = ImageReader::open(path)
        .map_err(MediaError::io)?
        .with_guessed_format()
        .map_err(MediaError::io)?
        .into_decoder()
        .map_err(|e| MediaError::Invalid(format!("the image cannot be decoded: {e}")))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let scale = if format == ImageFormat::Jpeg {
        reduced_scale(w, h, min_side)
    } else {
        1
    };
    let mut img = if scale > 1 {
        drop(decoder);
        decode_jpeg_reduced(path, scale)?
    } else {
        let mut l = Limits::default();
        l.max_image_width = Some(limits.max_width);
        l.max_image_height = Some(limits.max_height);
        l.max_alloc = Some(limits.max_pixels.saturating_mul(8));
        decoder
            .set_limits(l)
            .map_err(|e| MediaError::Invalid(format!("the image is too large: {e}")))?;
        DynamicImage::from_decoder(decoder)
            .map_err(|e| MediaError::Invalid(format!("the image cannot be decoded: {e}")))?
    };
    img.apply_orientation(orientation);
    let (width, height) = match orientation {
        image::metadata::Orientation::Rotate90
        | image::metadata::Orientation::Rotate270
        | image::metadata::Orientation::Rotate90FlipH
        | image::metadata::Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    };
    Ok(Decoded {
        image: img,
        format,
        width,
        height,
        scale,
    })
}

/// Decodes `path` and writes `thumbnail.{jpg,webp}` and `preview.{jpg,webp}` into `out_dir`.
/// The preview is encoded on a second thread while this one makes and encodes the thumbnail.
pub fn process(
    path: &Path,
    limits: &ImageLimits,
    out_dir: &Path,
) -> Result<ImageOutput, MediaError> {
    let decoded = decode(path, limits, PREVIEW_SIDE)?;
    let img = decoded.image;
    let preview = if img.width().max(img.height()) > PREVIEW_SIDE {
        img.thumbnail(PREVIEW_SIDE, PREVIEW_SIDE)
    } else {
        img
    };
    let thumbnail = preview.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE);
    std::thread::scope(|scope| {
        let preview_written =
            scope.spawn(|| write_jpeg_and_webp(&preview, &out_dir.join("preview")));
        write_jpeg_and_webp(&thumbnail, &out_dir.join("thumbnail"))?;
        preview_written
            .join()
            .map_err(|_| MediaError::Processing("the preview encoder panicked".into()))?
    })?;
    Ok(ImageOutput {
        width: decoded.width,
        height: decoded.height,
        format: format!("{:?}", decoded.format).to_lowercase(),
        thumbnail: (thumbnail.width(), thumbnail.height()),
        preview: (preview.width(), preview.height()),
        decode_scale: decoded.scale,
    })
}

/// The largest power-of-two reduction (up to 8) that keeps the long side at least `target`.
pub fn reduced_scale(w: u32, h: u32, target: u32) -> u32 {
    let long = w.max(h);
    let mut scale = 1;
    while scale < 8 && long / (scale * 2) >= target {
        scale *= 2;
    }
    scale
}

/// Decodes a JPEG at 1/`scale` size with FFmpeg's MJPEG decoder (`lowres`: the inverse DCT
/// produces the small picture directly).
fn decode_jpeg_reduced(path: &Path, scale: u32) -> Result<DynamicImage, MediaError> {
    use ffmpeg_next as ff;
    let bad = |e: ff::Error| MediaError::Invalid(format!("the JPEG cannot be decoded: {e}"));
    let mut ictx = super::video::open_input(path, super::Kind::Image)?;
    let stream = ictx
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| MediaError::Invalid("the JPEG has no picture".into()))?;
    let index = stream.index();
    let ctx = ff::codec::context::Context::from_parameters(stream.parameters()).map_err(bad)?;
    let codec = ff::codec::decoder::find(ff::codec::Id::MJPEG)
        .ok_or_else(|| MediaError::Processing("this FFmpeg build has no MJPEG decoder".into()))?;
    let mut opts = ff::Dictionary::new();
    opts.set("lowres", &scale.trailing_zeros().to_string());
    let mut decoder = ctx
        .decoder()
        .open_as_with(codec, opts)
        .and_then(|d| d.video())
        .map_err(bad)?;
    let mut frame = ff::frame::Video::empty();
    let mut got = false;
    for (s, packet) in ictx.packets() {
        if s.index() != index {
            continue;
        }
        decoder.send_packet(&packet).map_err(bad)?;
        if decoder.receive_frame(&mut frame).is_ok() {
            got = true;
            break;
        }
    }
    if !got {
        let _ = decoder.send_eof();
        got = decoder.receive_frame(&mut frame).is_ok();
    }
    if !got {
        return Err(MediaError::Invalid(
            "the JPEG has no decodable picture".into(),
        ));
    }
    let mut rgb = ff::frame::Video::empty();
    let mut scaler = ff::software::scaling::Context::get(
        frame.format(),
        frame.width(),
        frame.height(),
        ff::format::Pixel::RGB24,
        frame.width(),
        frame.height(),
        ff::software::scaling::Flags::BILINEAR,
    )
    .map_err(|e| MediaError::Processing(format!("colour conversion: {e}")))?;
    scaler
        .run(&frame, &mut rgb)
        .map_err(|e| MediaError::Processing(format!("colour conversion: {e}")))?;
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let start = row * stride;
        pixels.extend_from_slice(
            data.get(start..start + w * 3)
                .ok_or_else(|| MediaError::Processing("short RGB frame".into()))?,
        );
    }
    image::RgbImage::from_raw(rgb.width(), rgb.height(), pixels)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| MediaError::Processing("short RGB frame".into()))
}

/// Writes `<base>.jpg` (quality 85) and `<base>.webp` (lossless: the `image` crate's WebP
/// encoder has no lossy mode).
pub fn write_jpeg_and_webp(img: &DynamicImage, base: &Path) -> Result<(), MediaError> {
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    let jpg = std::fs::File::create(base.with_extension("jpg")).map_err(MediaError::io)?;
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(BufWriter::new(jpg), 85);
    encoder
        .encode_image(&rgb)
        .map_err(|e| MediaError::Processing(format!("JPEG encoding: {e}")))?;
    let webp = std::fs::File::create(base.with_extension("webp")).map_err(MediaError::io)?;
    rgb.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(
        BufWriter::new(webp),
    ))
    .map_err(|e| MediaError::Processing(format!("WebP encoding: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lectern-img-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_huge_png_of_a_few_kilobytes_is_refused_before_decoding() {
        let dir = temp_dir();
        let path = dir.join("bomb.png");
        std::fs::write(&path, super::super::sniff::tests::png_bomb(50_000, 50_000)).expect("write");
        assert!(std::fs::metadata(&path).expect("meta").len() < 10_000);
        let err = process(&path, &ImageLimits::default(), &dir).expect_err("refused");
        assert!(
            matches!(&err, MediaError::Invalid(m) if m.contains("50000 × 50000")),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_the_exif_orientation() {
        let dir = temp_dir();
        let path = dir.join("photo.png");
        image::RgbImage::from_fn(900, 600, |x, _| image::Rgb([(x % 256) as u8, 10, 20]))
            .save(&path)
            .expect("save");
        let out = process(&path, &ImageLimits::default(), &dir).expect("processed");
        assert_eq!(out.thumbnail, (300, 200));
        assert_eq!(out.preview, (900, 600));
        for name in [
            "thumbnail.jpg",
            "thumbnail.webp",
            "preview.jpg",
            "preview.webp",
        ] {
            let img = image::open(dir.join(name)).expect(name);
            assert!(img.width() > 0, "{name}");
        }
        let thumb = image::open(dir.join("thumbnail.webp")).expect("webp");
        assert_eq!((thumb.width(), thumb.height()), (300, 200));

        // A camera JPEG stored landscape with EXIF orientation 6 (rotate 90° clockwise).
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(900, 600))
            .write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .expect("jpeg");
        let tiff: [u8; 26] = [
            b'I', b'I', 0x2a, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0,
            0, 0,
        ];
        let mut app1 = vec![0xff, 0xe1, 0, 34];
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        jpeg.splice(2..2, app1);
        let path = dir.join("camera.jpg");
        std::fs::write(&path, &jpeg).expect("write");
        let out = process(&path, &ImageLimits::default(), &dir).expect("processed");
        assert_eq!((out.width, out.height), (600, 900));
        assert_eq!(out.thumbnail, (200, 300));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn large_jpegs_decode_at_reduced_scale() {
        assert_eq!(reduced_scale(6000, 4000, 1280), 4);
        assert_eq!(reduced_scale(1000, 800, 1280), 1);
        assert_eq!(reduced_scale(20000, 100, 1280), 8);
        let dir = temp_dir();
        let path = dir.join("big.jpg");
        image::RgbImage::from_fn(3000, 2000, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        })
        .save(&path)
        .expect("save");
        // Named as the worker names it: FFmpeg would pick its `image2` demuxer for a `.jpg`
        // name, and only the JPEG demuxer is allowed.
        let source = dir.join("source");
        std::fs::rename(&path, &source).expect("rename");
        let out = process(&source, &ImageLimits::default(), &dir).expect("processed");
        assert_eq!(out.decode_scale, 2);
        assert_eq!((out.width, out.height), (3000, 2000));
        assert_eq!(out.thumbnail, (300, 200));
        assert_eq!(out.preview, (1280, 853));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
