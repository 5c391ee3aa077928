//! Learning-curve outputs: a CSV of every generation and a PNG plot of return vs env steps.
//!
//! The plot uses plotters' `ab_glyph` text backend with DejaVu Sans embedded in the binary (the
//! `dejavu` crate) instead of plotters' default `ttf` feature, which goes through font-kit and
//! needs fontconfig/freetype and system fonts: this way the example renders labelled plots on
//! a bare machine with no font packages installed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::train::GenerationRecord;

/// Width and height of the learning-curve PNG in pixels.
pub const PLOT_SIZE: (u32, u32) = (1024, 640);

/// The font family name the plot asks plotters for; registered from the embedded font.
const FONT_FAMILY: &str = "sans-serif";

/// The CSV header; the column order of [`write_csv`].
pub const CSV_HEADER: &str =
    "iteration,env_steps,wall_seconds,mean_return,mean_return_last100,steps_per_second";

/// Why a report file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating or writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded font could not be parsed (would mean a broken build).
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// Plotters failed to draw or encode the PNG (including IO errors while saving it).
    #[error("plotting {path}: {message}")]
    Plot {
        /// The PNG being written.
        path: PathBuf,
        /// Plotters' description of the failure.
        message: String,
    },
}

/// Writes one CSV row per generation, with [`CSV_HEADER`] first.
pub fn write_csv(path: &Path, records: &[GenerationRecord]) -> Result<(), ReportError> {
    let io_error = |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io_error)?);
    writeln!(out, "{CSV_HEADER}").map_err(io_error)?;
    for r in records {
        writeln!(
            out,
            "{},{},{:.3},{:.2},{:.2},{:.1}",
            r.iteration,
            r.env_steps,
            r.wall_seconds,
            r.mean_return,
            r.mean_return_last100,
            r.steps_per_second
        )
        .map_err(io_error)?;
    }
    out.flush().map_err(io_error)
}

/// Registers the embedded font with plotters once per process.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok { Ok(()) } else { Err(ReportError::Font) }
}

/// Plots mean return against environment steps: the per-generation evaluation mean, the
/// running mean over the stop rule's window, and the `solved_threshold` line.
pub fn write_plot(
    path: &Path,
    records: &[GenerationRecord],
    solved_threshold: f64,
) -> Result<(), ReportError> {
    ensure_font()?;
    let plot_error = |err: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_path_buf(),
        message: err.to_string(),
    };
    let max_steps = records
        .iter()
        .map(|r| r.env_steps)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CartPole-v1, evolution strategies: mean return vs environment steps",
            (FONT_FAMILY, 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_steps * 1.02, 0.0..520.0)
        .map_err(|e| plot_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("environment steps")
        .y_desc("return")
        .label_style((FONT_FAMILY, 16))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| plot_error(&e))?;

    let per_generation = records.iter().map(|r| (r.env_steps as f64, r.mean_return));
    chart
        .draw_series(LineSeries::new(
            per_generation,
            BLUE.mix(0.5).stroke_width(1),
        ))
        .map_err(|e| plot_error(&e))?
        .label("mean return (generation's evaluation episodes)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.mix(0.5)));
    let windowed = records
        .iter()
        .map(|r| (r.env_steps as f64, r.mean_return_last100));
    chart
        .draw_series(LineSeries::new(windowed, BLUE.stroke_width(3)))
        .map_err(|e| plot_error(&e))?
        .label("mean return, last 100 evaluation episodes")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(
            [
                (0.0, solved_threshold),
                (max_steps * 1.02, solved_threshold),
            ],
            RED.stroke_width(2),
        ))
        .map_err(|e| plot_error(&e))?
        .label(format!("solved ({solved_threshold})"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT_FAMILY, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(&e))?;
    // `present` writes the file; without it the backend would save on drop and swallow errors.
    root.present().map_err(|e| plot_error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<GenerationRecord> {
        (1..=30u32)
            .map(|i| GenerationRecord {
                iteration: u64::from(i),
                env_steps: u64::from(i) * 4_000,
                wall_seconds: f64::from(i) * 0.1,
                mean_return: f64::from(i * 17 % 500),
                mean_return_last100: f64::from(i * 16),
                steps_per_second: 40_000.0,
            })
            .collect()
    }

    #[test]
    fn csv_has_header_and_one_row_per_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.csv");
        write_csv(&path, &sample_records()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 31);
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "1,4000,0.100,17.00,16.00,40000.0");
        assert!(lines.iter().all(|l| l.split(',').count() == 6));
    }

    #[test]
    fn png_decodes_and_has_rendered_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        write_plot(&path, &sample_records(), 475.0).unwrap();

        let file = File::open(&path).unwrap();
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), PLOT_SIZE);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let row_bytes = info.line_size;

        // The caption band (top 45 px, inside the margin) holds nothing but the title text:
        // dark pixels there prove that glyphs were actually rasterized.
        let dark_in_caption = pixels[..45 * row_bytes]
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 100))
            .count();
        assert!(
            dark_in_caption > 500,
            "caption has {dark_in_caption} dark pixels"
        );

        // The plot itself has red (threshold) and blue (curves) pixels.
        let red = pixels
            .chunks_exact(3)
            .filter(|p| p[0] > 200 && p[1] < 60 && p[2] < 60)
            .count();
        let blue = pixels
            .chunks_exact(3)
            .filter(|p| p[2] > 200 && p[0] < 60 && p[1] < 60)
            .count();
        assert!(red > 500 && blue > 500, "red {red}, blue {blue}");
    }

    #[test]
    fn empty_curve_still_plots_and_bad_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_plot(&dir.path().join("empty.png"), &[], 475.0).unwrap();
        write_csv(&dir.path().join("empty.csv"), &[]).unwrap();

        let missing = dir.path().join("no-such-dir").join("curve.csv");
        assert!(matches!(
            write_csv(&missing, &[]),
            Err(ReportError::Io { .. })
        ));
        let missing_png = dir.path().join("no-such-dir").join("curve.png");
        assert!(matches!(
            write_plot(&missing_png, &sample_records(), 475.0),
            Err(ReportError::Plot { .. })
        ));
    }
}
