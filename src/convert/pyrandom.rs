//! CPython's `random` module, the part `convert_to_llava_format.py` draws from:
//! `random.seed(0)` and `random.shuffle(list)`, giving the same draws in the same order.
//!
//! Read from CPython's sources (3.11, unchanged in what is used here since 3.2):
//! - `Modules/_randommodule.c`: MT19937 (`init_genrand`, `init_by_array`,
//!   `genrand_uint32`, the Matsumoto-Nishimura reference code); `random_seed` turns an int
//!   seed into the key of `init_by_array`: its absolute value's 32-bit words, least
//!   significant first, one word `[0]` for 0 (`keyused = bits == 0 ? 1 : ...`);
//!   `getrandbits(k)` is `genrand_uint32() >> (32 - k)` for `k <= 32`, else whole words
//!   from the least significant, the last one shifted down to the bits it keeps.
//! - `Lib/random.py`: `shuffle(x)` swaps `x[i]` with `x[_randbelow(i + 1)]` for `i` from
//!   `len(x) - 1` down to 1; `_randbelow(n)` draws `getrandbits(n.bit_length())` until the
//!   draw is below `n` (rejection sampling, so a draw can take several words).

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The state of a `random.Random`.
pub struct PyRandom {
    mt: [u32; N],
    /// The next word of `mt` to temper; `N` means the block must be regenerated first.
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` (equivalently `random.Random(seed)`) for an integer seed.
    pub fn seeded(seed: u64) -> Self {
        // The absolute value's 32-bit words, least significant first; at least one.
        let key: &[u32] = &[seed as u32, (seed >> 32) as u32];
        let used = if seed >> 32 == 0 { 1 } else { 2 };
        let mut random = PyRandom {
            mt: [0; N],
            index: N,
        };
        random.init_by_array(&key[..used]);
        random
    }

    fn init_genrand(&mut self, seed: u32) {
        self.mt[0] = seed;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        // MSB is 1, assuring a non-zero initial array.
        self.mt[0] = 0x8000_0000;
    }

    /// The next 32 bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.generate();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// The next block of `N` words (the reference code's loop, split where it wraps).
    fn generate(&mut self) {
        let twist = |upper: u32, lower: u32, far: u32| {
            let y = (upper & UPPER_MASK) | (lower & LOWER_MASK);
            far ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for k in 0..N - M {
            self.mt[k] = twist(self.mt[k], self.mt[k + 1], self.mt[k + M]);
        }
        for k in N - M..N - 1 {
            self.mt[k] = twist(self.mt[k], self.mt[k + 1], self.mt[k + M - N]);
        }
        self.mt[N - 1] = twist(self.mt[N - 1], self.mt[0], self.mt[M - 1]);
        self.index = 0;
    }

    /// `getrandbits(k)` for `k <= 64` (Python's takes any `k`; a shuffle of a list that
    /// fits in memory never asks for more than 64).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k}) is wider than 64 bits");
        match k {
            0 => 0,
            1..=32 => u64::from(self.next_u32() >> (32 - k)),
            _ => {
                let low = u64::from(self.next_u32());
                let high = u64::from(self.next_u32() >> (64 - k));
                (high << 32) | low
            }
        }
    }

    /// `_randbelow(n)`: a draw in `0..n`, `n > 0`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        // Python's `n.bit_length()`, deliberately not `(n - 1).bit_length()`.
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(items)`: the same permutation from the same draws.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by Python 3.11.7 (`r = random.Random(0)`, which seeds as
    // `random.seed(0)` does):
    //   [r.getrandbits(32) for _ in range(3)]              -> the first test
    //   1000 x r.getrandbits(32), then r.getrandbits(32)  -> 126175447 (second block)
    //   r.getrandbits(64), r.getrandbits(33)              -> 7106521602475165645 7550356652
    //   [r._randbelow(n) for n in (2, 2, 2, 2, 3, 5, 7, 1000)] -> [1, 1, 0, 1, 2, 3, 3, 940]
    //   x = list(range(10)); r.shuffle(x)                  -> [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]

    #[test]
    fn seed_zero_gives_pythons_words() {
        let mut r = PyRandom::seeded(0);
        let words: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(words, [3_626_764_237, 1_654_615_998, 3_255_389_356]);
        let mut r = PyRandom::seeded(0);
        for _ in 0..1000 {
            r.next_u32();
        }
        assert_eq!(r.next_u32(), 126_175_447);
    }

    #[test]
    fn wide_getrandbits_fill_from_the_least_significant_word() {
        let mut r = PyRandom::seeded(0);
        assert_eq!(r.getrandbits(64), 7_106_521_602_475_165_645);
        assert_eq!(r.getrandbits(33), 7_550_356_652);
    }

    #[test]
    fn randbelow_rejects_like_python() {
        let mut r = PyRandom::seeded(0);
        let draws: Vec<u64> = [2, 2, 2, 2, 3, 5, 7, 1000]
            .iter()
            .map(|&n| r.randbelow(n))
            .collect();
        assert_eq!(draws, [1, 1, 0, 1, 2, 3, 3, 940]);
    }

    #[test]
    fn shuffle_matches_random_shuffle() {
        let mut r = PyRandom::seeded(0);
        let mut x: Vec<u32> = (0..10).collect();
        r.shuffle(&mut x);
        assert_eq!(x, [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]);
    }
}
