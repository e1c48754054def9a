//! The data both benchmarks use: 16 KiB pages alternating row-like text
//! (varying ids and amounts, as in real tables) and random bytes, like
//! tablespaces.

/// `n` bytes of mixed pages.
pub fn mixed(n: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_u32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut out = Vec::with_capacity(n + 128);
    while out.len() < n {
        let page = out.len() / 16384;
        if page % 2 == 0 {
            // Row-like text with varying ids and amounts, as in real tables.
            let line = format!(
                "row {:>10} | status=active | region=eu-west | amount={:>8} | note=lorem ipsum\n",
                next() % 1_000_000,
                next() % 99_999
            );
            out.extend_from_slice(line.as_bytes());
        } else {
            out.extend_from_slice(&next().to_le_bytes());
        }
    }
    out.truncate(n);
    out
}
