//! The font figures are drawn with. plotters measures text to lay out axes (for SVG too) and
//! rasterises it for PNG, so it needs a TrueType font; we read the system's DejaVu Sans at run
//! time instead of shipping one.

use crate::error::{Error, Result};
use plotters::style::FontStyle;
use std::path::PathBuf;
use std::sync::Mutex;

/// Debian and Ubuntu's fonts-dejavu-core puts it here.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Environment variable naming another TrueType/OpenType font file.
pub const FONT_ENV: &str = "HSAP_FONT";
/// The family name figures ask for; SVG text names it too, so browsers use their own sans-serif.
pub const FAMILY: &str = "sans-serif";

const HINT: &str =
    "install DejaVu Sans (Debian/Ubuntu: apt-get install fonts-dejavu-core) or set HSAP_FONT to a .ttf file";

static REGISTERED: Mutex<bool> = Mutex::new(false);

/// Registers the font with plotters once per process.
pub fn ensure_registered() -> Result<()> {
    let mut done = REGISTERED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *done {
        return Ok(());
    }
    let path = std::env::var_os(FONT_ENV).map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from);
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
        hint: HINT,
    })?;
    // plotters keeps fonts for the life of the process and wants them 'static; this runs once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| Error::input(&path, 0, "not a TrueType or OpenType font", HINT))?;
    *done = true;
    Ok(())
}
