//! A writer for the `newc` cpio format, the format of a Linux initramfs: directories,
//! regular files and device nodes, owned by root, written uncompressed (the kernel
//! unpacks it as it is, and under software emulation that is faster than gunzip).
//! Missing parent directories are added (mode 0755) before an entry.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// Regular file.
const S_IFREG: u32 = 0o100_000;
/// Directory.
const S_IFDIR: u32 = 0o040_000;
/// Character device.
const S_IFCHR: u32 = 0o020_000;

/// An archive being written to `W`; [`Archive::finish`] writes the trailer.
pub struct Archive<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
    dirs: BTreeSet<String>,
}

impl<W: Write> Archive<W> {
    /// An empty archive.
    pub fn new(out: W) -> Self {
        Archive {
            out,
            next_inode: 1,
            written: 0,
            dirs: BTreeSet::new(),
        }
    }

    /// A directory (the parents of an entry must come before it).
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | mode, 2, (0, 0), &[])?;
        self.dirs.insert(name.to_owned());
        Ok(())
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | mode, 1, (0, 0), data)
    }

    /// A character device node `major:minor`.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | mode, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the writer and the archive's size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.next_inode = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for cpio"))?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        if let Some((parent, _)) = name.rsplit_once('/')
            && !self.dirs.contains(parent)
        {
            self.dir(parent, 0o755)?;
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        // Magic, then 13 fields of 8 hex digits: inode, mode, uid, gid, nlink, mtime,
        // size, device major/minor, rdev major/minor, name size, checksum (unused).
        let fields = [
            inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads with zeros to the next multiple of 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parse_back() -> io::Result<()> {
        let mut a = Archive::new(Vec::new());
        a.dir("bin", 0o700)?;
        a.file("bin/x", 0o644, b"hello")?;
        a.file("vm/a/y", 0o600, b"")?;
        a.char_device("console", 0o600, 5, 1)?;
        let (bytes, size) = a.finish()?;
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(size % 4, 0);

        // Walk the archive as the kernel does.
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let header = std::str::from_utf8(&bytes[at..at + 110]).expect("ascii header");
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| {
                u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).expect("hex field")
            };
            let (mode, size, rdev_major, name_size) =
                (field(1), field(6) as usize, field(9), field(11) as usize);
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + name_size - 1])
                .expect("name")
                .to_owned();
            at = (at + 110 + name_size).next_multiple_of(4);
            let data = bytes[at..at + size].to_vec();
            at = (at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
            seen.push((name, mode, rdev_major, data));
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            seen,
            vec![
                ("bin".to_owned(), S_IFDIR | 0o700, 0, vec![]),
                ("bin/x".to_owned(), S_IFREG | 0o644, 0, b"hello".to_vec()),
                ("vm".to_owned(), S_IFDIR | 0o755, 0, vec![]),
                ("vm/a".to_owned(), S_IFDIR | 0o755, 0, vec![]),
                ("vm/a/y".to_owned(), S_IFREG | 0o600, 0, vec![]),
                ("console".to_owned(), S_IFCHR | 0o600, 5, vec![]),
            ]
        );
        Ok(())
    }
}
