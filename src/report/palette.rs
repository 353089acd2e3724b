//! Colours. A strategy has one colour in every figure and table; other dimensions (step-time
//! parts, group shapes, measurement kinds) use colours that cannot be mistaken for a strategy's.

use plotters::style::RGBColor;

/// The colour of a strategy, everywhere. Known strategies have fixed colours (Okabe-Ito hues,
/// which stay distinct for colour-blind readers); hsap gets the boldest. Any other name gets a
/// colour chosen from its spelling, so it never changes between runs.
pub fn strategy_colour(name: &str) -> RGBColor {
    match name {
        "hsap" => RGBColor(0xD5, 0x5E, 0x00),
        "flexsp" => RGBColor(0x00, 0x72, 0xB2),
        "megatron-dcp" => RGBColor(0x00, 0x9E, 0x73),
        "static-ulysses" => RGBColor(0xCC, 0x79, 0xA7),
        "static-ring" => RGBColor(0x8C, 0x6D, 0x31),
        "static-usp" => RGBColor(0x70, 0x70, 0x70),
        other => {
            const EXTRA: [RGBColor; 4] = [
                RGBColor(0x56, 0xB4, 0xE9),
                RGBColor(0xE6, 0x9F, 0x00),
                RGBColor(0x00, 0x00, 0x00),
                RGBColor(0x88, 0x22, 0x55),
            ];
            // FNV-1a: stable across runs and platforms, unlike std's hasher.
            let hash = other.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            EXTRA[(hash % EXTRA.len() as u64) as usize]
        }
    }
}

/// `#rrggbb` for HTML.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The parts of a step, in stacking order from the axis up: muted tones, so that the stacked bars
/// do not look like strategies.
pub const PART_COLOURS: [RGBColor; 4] = [
    RGBColor(0x5A, 0x5A, 0x5A), // compute
    RGBColor(0x9E, 0xC9, 0xE2), // exposed communication
    RGBColor(0xF4, 0xC4, 0x7A), // idle
    RGBColor(0xB5, 0xD9, 0x9C), // gradient sync
];

/// A group shape's colour: the hue tells the group size, the shade the split (darkest for pure
/// Ulysses, lighter as the ring degree grows), so that shapes of one size read as a family.
pub fn shape_colour(ulysses: u32, ring: u32) -> RGBColor {
    // Hues for sizes 1, 2, 4, ... 512 GPUs, spaced to stay apart next to each other.
    const HUES: [f64; 10] = [210.0, 45.0, 280.0, 130.0, 0.0, 185.0, 320.0, 90.0, 250.0, 20.0];
    let size = (ulysses * ring).max(1);
    let size_log = f64::from(size).log2();
    let hue = HUES[(size_log.round() as usize) % HUES.len()];
    let ring_share = if size > 1 {
        f64::from(ring.max(1)).log2() / size_log
    } else {
        0.0
    };
    hsl(hue, 0.55, 0.35 + 0.35 * ring_share)
}

/// Colours for the series of the measurement figures (measurement kinds, collectives).
pub fn series_colour(i: usize) -> RGBColor {
    const SERIES: [RGBColor; 8] = [
        RGBColor(0x1B, 0x9E, 0x77),
        RGBColor(0x75, 0x70, 0xB3),
        RGBColor(0xE7, 0x29, 0x8A),
        RGBColor(0x66, 0xA6, 0x1E),
        RGBColor(0xA6, 0x76, 0x1D),
        RGBColor(0x1F, 0x78, 0xB4),
        RGBColor(0xE6, 0xAB, 0x02),
        RGBColor(0x33, 0x33, 0x33),
    ];
    SERIES[i % SERIES.len()]
}

/// HSL (hue in degrees, saturation and lightness in [0, 1]) to RGB.
fn hsl(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = (h.rem_euclid(360.0)) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let byte = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(byte(r), byte(g), byte(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_strategies_have_distinct_colours() {
        let colours: std::collections::BTreeSet<(u8, u8, u8)> = crate::formats::run::KNOWN_STRATEGIES
            .iter()
            .map(|s| {
                let c = strategy_colour(s);
                (c.0, c.1, c.2)
            })
            .collect();
        assert_eq!(colours.len(), crate::formats::run::KNOWN_STRATEGIES.len());
        assert_eq!(hex(strategy_colour("hsap")), "#d55e00");
    }

    #[test]
    fn unknown_strategies_never_look_like_known_ones() {
        let known: Vec<RGBColor> = crate::formats::run::KNOWN_STRATEGIES
            .iter()
            .map(|s| strategy_colour(s))
            .collect();
        for name in ["exact-milp", "hsap-no-pack", "static-allgather", "x"] {
            assert!(!known.contains(&strategy_colour(name)), "{name}");
        }
    }

    #[test]
    fn hsl_primaries() {
        assert_eq!(hsl(0.0, 1.0, 0.5), RGBColor(255, 0, 0));
        assert_eq!(hsl(120.0, 1.0, 0.5), RGBColor(0, 255, 0));
        assert_eq!(hsl(240.0, 1.0, 0.5), RGBColor(0, 0, 255));
        assert_eq!(hsl(0.0, 0.0, 1.0), RGBColor(255, 255, 255));
    }

    #[test]
    fn shapes_of_one_size_share_a_hue_and_differ_in_shade() {
        let ulysses = shape_colour(8, 1);
        let usp = shape_colour(4, 2);
        let ring = shape_colour(1, 8);
        assert_ne!(ulysses, usp);
        assert_ne!(usp, ring);
        let brightness = |c: RGBColor| u32::from(c.0) + u32::from(c.1) + u32::from(c.2);
        assert!(brightness(ulysses) < brightness(usp) && brightness(usp) < brightness(ring));
        assert_ne!(shape_colour(8, 1), shape_colour(16, 1));
    }
}
