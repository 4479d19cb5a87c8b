//! QR codes for enrollment URLs: half-block text for the terminal and PNG images for
//! printing.

use std::path::Path;

use anyhow::Context as _;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};

/// Light modules around the symbol, as the QR specification asks.
pub const QUIET_ZONE: usize = 4;
/// Pixels per module in PNG output.
pub const PNG_SCALE: usize = 8;

fn encode(text: &str) -> anyhow::Result<QrCode> {
    QrCode::new(text.as_bytes()).context("cannot encode the enrollment URL as a QR code")
}

/// The QR code of `text` drawn with half-block characters, two modules per character
/// cell, with a quiet zone.
///
/// Light modules are drawn as filled blocks, so the code reads correctly on the usual
/// light-on-dark terminal; write a PNG for anything else.
pub fn terminal(text: &str) -> anyhow::Result<String> {
    let code = encode(text)?;
    let mut out = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    out.push('\n');
    Ok(out)
}

/// The QR code of `text` as an 8-bit grayscale PNG: black modules on white,
/// [`PNG_SCALE`] pixels per module and a quiet zone of [`QUIET_ZONE`] modules.
pub fn png(text: &str) -> anyhow::Result<Vec<u8>> {
    let code = encode(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![u8::MAX; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            let row = y * side;
            pixels[row + mx * PNG_SCALE..row + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let side = u32::try_from(side).context("QR code too large for a PNG")?;
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode PNG")?;
    writer
        .write_image_data(&pixels)
        .context("cannot encode PNG")?;
    writer.finish().context("cannot encode PNG")?;
    Ok(bytes)
}

/// Writes the QR code of `text` to `path` as a PNG (encoded fully before the file is
/// touched).
pub fn write_png(text: &str, path: &Path) -> anyhow::Result<()> {
    let bytes = png(text)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const URL: &str = "redoubt://enroll?server=https%3A%2F%2F127.0.0.1%3A8443\
                       &token=abc_DEF-123&ca=sha256%3A00";

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .expect("valid PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("valid PNG data");
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn png_has_quiet_zone_and_scaled_modules() {
        let modules = encode(URL).expect("encodes").width();
        let (info, pixels) = decode(&png(URL).expect("png"));
        let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(pixels.len(), side * side);
        let at = |x: usize, y: usize| pixels[y * side + x];
        // The quiet zone is white, the top-left finder pattern starts right after it
        // with a black module, and every module is a solid 8x8 square.
        let edge = QUIET_ZONE * PNG_SCALE;
        assert!((0..edge).all(|i| at(i, i) == u8::MAX && at(side - 1 - i, i) == u8::MAX));
        for dy in 0..PNG_SCALE {
            for dx in 0..PNG_SCALE {
                assert_eq!(at(edge + dx, edge + dy), 0);
                // Second ring of the finder pattern is light.
                assert_eq!(at(edge + PNG_SCALE + dx, edge + PNG_SCALE + dy), u8::MAX);
            }
        }
    }

    #[test]
    fn png_matches_the_modules() {
        let code = encode(URL).expect("encodes");
        let modules = code.width();
        let colors = code.to_colors();
        let (_, pixels) = decode(&png(URL).expect("png"));
        let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
        for (i, color) in colors.iter().enumerate() {
            let x = (i % modules + QUIET_ZONE) * PNG_SCALE + PNG_SCALE / 2;
            let y = (i / modules + QUIET_ZONE) * PNG_SCALE + PNG_SCALE / 2;
            let expect = if *color == Color::Dark { 0 } else { u8::MAX };
            assert_eq!(pixels[y * side + x], expect, "module {i}");
        }
    }

    #[test]
    fn write_png_creates_a_readable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("enroll.png");
        write_png(URL, &path).expect("writes");
        let bytes = std::fs::read(&path).expect("reads back");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        decode(&bytes);
        let err = write_png(URL, &dir.path().join("missing/enroll.png")).expect_err("no dir");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }

    #[test]
    fn terminal_code_is_half_blocks_with_quiet_zone() {
        let modules = encode(URL).expect("encodes").width();
        let text = terminal(URL).expect("renders");
        let lines: Vec<&str> = text.lines().collect();
        let side = modules + 2 * QUIET_ZONE;
        assert_eq!(lines.len(), side.div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == side));
        // The quiet zone (light) is drawn as full blocks.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'));
        assert!(
            text.chars()
                .all(|c| matches!(c, ' ' | '\u{2580}' | '\u{2584}' | '\u{2588}' | '\n'))
        );
    }
}
