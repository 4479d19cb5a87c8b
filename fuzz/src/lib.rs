//! Shared pieces of the fuzz targets: the fixtures (keys, device, bundle) and helpers
//! to derive a tampered copy of signed bytes from the fuzzer's input.

pub mod fixtures;

/// `bytes` with one bit flipped, chosen by `choice` (a no-op on empty input).
pub fn flip_bit(bytes: &mut [u8], choice: u64) {
    if bytes.is_empty() {
        return;
    }
    let bit = (choice % (bytes.len() as u64 * 8)) as usize;
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// A number taken from the first eight bytes of the input (zero-padded).
pub fn choice(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
