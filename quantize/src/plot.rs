//! Line charts written as PNG files, for benchmark figures, evaluation reports and
//! training curves: a [`LineChart`] of [`Series`] on linear or logarithmic axes,
//! [`LineChart::write_png`].
//!
//! Drawn with plotters' bitmap backend into an RGB buffer and encoded with `png`; text
//! uses a font compiled into the binary (DejaVu Sans cut to ASCII, 23 KB,
//! `quantize/fonts/`), so a chart looks the same on every machine and needs no system
//! fonts.

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// DejaVu Sans, printable ASCII plus a few symbols (µ · × – — −). Its license (the
/// Bitstream Vera and Arev terms, which allow copies and modified copies under another
/// name, with the notice) is `quantize/fonts/LICENSE-DejaVu.txt`.
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-ascii.ttf");

/// The largest width or height [`LineChart::render`] accepts (an RGB buffer of
/// 8192 × 8192 is 192 MiB).
pub const MAX_SIDE: u32 = 8192;

/// A chart of lines through points, with a title, axis labels and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Printed above the plot.
    pub title: String,
    /// The x axis' description.
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// A logarithmic x axis (every x must then be positive).
    pub log_x: bool,
    /// A logarithmic y axis (every y must then be positive).
    pub log_y: bool,
    /// The lines, drawn in order (later ones on top), each with a legend entry.
    pub series: Vec<Series>,
    /// Text placed at points of the plot (names of measured things, say).
    pub annotations: Vec<Annotation>,
    /// Image width and height in pixels.
    pub size: (u32, u32),
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its legend entry.
    pub label: String,
    /// `(x, y)` points, joined in the given order.
    pub points: Vec<(f64, f64)>,
    /// How it is drawn.
    pub style: SeriesStyle,
}

/// Text at a point of a [`LineChart`], centred just below it.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The point `(x, y)`, in the axes' units.
    pub at: (f64, f64),
    /// The text.
    pub text: String,
}

/// How a [`Series`] is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesStyle {
    /// RGB colour.
    pub color: (u8, u8, u8),
    /// A dashed line (e.g. a bound or a reference), instead of a solid one.
    pub dashed: bool,
    /// A filled circle at each point (measurements), besides the line.
    pub markers: bool,
}

impl SeriesStyle {
    /// A solid line with a marker at each point: measured values.
    pub const fn measured(color: (u8, u8, u8)) -> Self {
        Self {
            color,
            dashed: false,
            markers: true,
        }
    }

    /// A dashed line without markers: a bound, a model or a reference.
    pub const fn reference(color: (u8, u8, u8)) -> Self {
        Self {
            color,
            dashed: true,
            markers: false,
        }
    }
}

/// Colours that stay apart from each other in print and for the common colour-vision
/// deficiencies (Okabe–Ito), for series that need distinct colours.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (0, 114, 178),   // blue
    (213, 94, 0),    // vermillion
    (0, 158, 115),   // bluish green
    (230, 159, 0),   // orange
    (86, 180, 233),  // sky blue
    (204, 121, 167), // reddish purple
    (240, 228, 66),  // yellow
    (0, 0, 0),       // black
];

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No series has a point.
    #[error("the chart has no points")]
    NoPoints,
    /// A point that cannot be placed: not finite, or not positive on a log axis.
    #[error("series {series:?}: point ({x}, {y}) is not finite, or not positive on a log axis")]
    BadPoint {
        /// The series' label.
        series: String,
        /// The point's x.
        x: f64,
        /// The point's y.
        y: f64,
    },
    /// A width or height of 0 or above [`MAX_SIDE`].
    #[error("image size {width}x{height}: each side must be 1..={MAX_SIDE} pixels")]
    Size {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// The compiled-in font was rejected (a build defect).
    #[error("the compiled-in font did not load")]
    Font,
    /// plotters failed while drawing (its message).
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("encoding the PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl LineChart {
    /// The chart as 8-bit RGB pixels, row by row (`3 × width × height` bytes).
    pub fn render(&self) -> Result<Vec<u8>, PlotError> {
        let (width, height) = self.size;
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(PlotError::Size { width, height });
        }
        register_font()?;
        let (x, y) = self.ranges()?;
        let mut buf = vec![0u8; 3 * width as usize * height as usize];
        match (self.log_x, self.log_y) {
            (false, false) => self.draw(&mut buf, x, y),
            (false, true) => self.draw(&mut buf, x, log_axis(y)),
            (true, false) => self.draw(&mut buf, log_axis(x), y),
            (true, true) => self.draw(&mut buf, log_axis(x), log_axis(y)),
        }?;
        Ok(buf)
    }

    /// The chart as a PNG file's bytes (8-bit RGB).
    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        let pixels = self.render()?;
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.size.0, self.size.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // A chart is mostly flat colour: the strongest filter search costs milliseconds
        // and keeps figures committed to the repository small.
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
        Ok(out)
    }

    /// Writes the chart to `path` as a PNG file.
    pub fn write_png(&self, path: &Path) -> Result<(), PlotError> {
        std::fs::write(path, self.to_png()?).map_err(|source| PlotError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The axes' ranges: the points' extent with a margin (a factor on log axes).
    fn ranges(&self) -> Result<(Range<f64>, Range<f64>), PlotError> {
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        let series = self.series.iter().map(|s| (&s.label, s.points.clone()));
        let notes = self.annotations.iter().map(|a| (&a.text, vec![a.at]));
        for (label, points) in series.chain(notes) {
            for (x, y) in points {
                let placeable = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
                if !placeable(x, self.log_x) || !placeable(y, self.log_y) {
                    return Err(PlotError::BadPoint {
                        series: label.clone(),
                        x,
                        y,
                    });
                }
                for (i, v) in [x, y].into_iter().enumerate() {
                    lo[i] = lo[i].min(v);
                    hi[i] = hi[i].max(v);
                }
            }
        }
        if lo[0] > hi[0] {
            return Err(PlotError::NoPoints);
        }
        let pad = |lo: f64, hi: f64, log: bool| {
            if log {
                let f = (hi / lo).powf(0.05).max(1.1);
                lo / f..hi * f
            } else {
                let m = if hi > lo {
                    0.05 * (hi - lo)
                } else {
                    0.5 * lo.abs().max(1.0)
                };
                lo - m..hi + m
            }
        };
        Ok((pad(lo[0], hi[0], self.log_x), pad(lo[1], hi[1], self.log_y)))
    }

    fn draw<X, Y>(&self, buf: &mut [u8], x: X, y: Y) -> Result<(), PlotError>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let err = |e: &dyn std::fmt::Display| PlotError::Draw(e.to_string());
        // Text sizes are even: plotters places each glyph at half the size below its
        // top, truncated to a pixel, so at odd sizes the short glyphs (. , -) land a pixel
        // off the baseline (seen: "2·5" for "2.5" at 13 px).
        let root = BitMapBackend::with_buffer(buf, self.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x, y)
            .map_err(|e| err(&e))?;
        let tick = |v: &f64| tick_label(*v);
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(205, 205, 205))
            .draw()
            .map_err(|e| err(&e))?;
        for s in &self.series {
            let (r, g, b) = s.style.color;
            let color = RGBColor(r, g, b);
            let line = color.stroke_width(2);
            let anno = if s.style.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 8, 6, line))
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), line))
            }
            .map_err(|e| err(&e))?;
            anno.label(&s.label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
            if s.style.markers {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| err(&e))?;
            }
        }
        let note = ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(60, 60, 60))
            .pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(
                self.annotations.iter().map(|a| {
                    EmptyElement::at(a.at) + Text::new(a.text.clone(), (0, 8), note.clone())
                }),
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// A logarithmic axis over `r` with grid lines and labels at 1, 2 and 5 times the powers
/// of ten inside it (all of 1..9 where that leaves fewer than three; only the powers where
/// it gives more than twelve), minor grid lines at 1..9 times them.
fn log_axis(r: Range<f64>) -> impl AsRangedCoord<Value = f64, CoordDescType: ValueFormatter<f64>> {
    let points = |mantissas: &[f64]| -> Vec<f64> {
        let (first, last) = (r.start.log10().floor() as i32, r.end.log10().ceil() as i32);
        (first..=last)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| r.contains(v))
            .collect()
    };
    let all: Vec<f64> = (1..10).map(f64::from).collect();
    let mut major = points(&[1.0, 2.0, 5.0]);
    if major.len() < 3 {
        major = points(&all);
    } else if major.len() > 12 {
        major = points(&[1.0]);
    }
    r.clone()
        .log_scale()
        .with_key_points(major)
        .with_light_points(points(&all))
}

/// Registers [`FONT`] as plotters' "sans-serif" (its default family) once per process.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// An axis tick: at most 3 significant digits, thousands as k, M, G.
fn tick_label(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = match scaled.abs() {
        0.0 => 0,
        a if a >= 100.0 => 0,
        a => (2 - a.log10().floor() as i32).clamp(0, 6) as usize,
    };
    let s = format!("{scaled:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s}{suffix}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn chart(log: bool) -> LineChart {
        LineChart {
            title: "decode rate against model bytes".into(),
            x_label: "MB read per token".into(),
            y_label: "tok/s".into(),
            log_x: log,
            log_y: log,
            series: vec![
                Series {
                    label: "measured".into(),
                    points: vec![(90.0, 120.0), (227.0, 42.0), (827.0, 12.5)],
                    style: SeriesStyle::measured(PALETTE[0]),
                },
                Series {
                    label: "bound".into(),
                    points: vec![(80.0, 150.0), (900.0, 13.0)],
                    style: SeriesStyle::reference(PALETTE[1]),
                },
            ],
            annotations: vec![Annotation {
                at: (227.0, 42.0),
                text: "mid".into(),
            }],
            size: (480, 320),
        }
    }

    /// Decodes a PNG written by `write_png`: (width, height, RGB pixels).
    pub(crate) fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::fs::File::open(path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        pixels.truncate(info.buffer_size());
        (info.width, info.height, pixels)
    }

    #[test]
    fn writes_a_png_of_the_asked_size_with_lines_and_text() {
        let dir = tempfile::tempdir().unwrap();
        for log in [false, true] {
            let path = dir.path().join(format!("chart-{log}.png"));
            let c = chart(log);
            c.write_png(&path).unwrap();
            let (w, h, px) = decode(&path);
            assert_eq!((w, h), (480, 320));
            let rgb: Vec<&[u8]> = px.chunks_exact(3).collect();
            let white = rgb.iter().filter(|p| **p == [255, 255, 255]).count();
            // Mostly background, but a good share drawn: axes, grid, text, lines.
            assert!(white > rgb.len() / 2, "{white} of {} white", rgb.len());
            assert!(
                white < rgb.len() * 99 / 100,
                "{white} of {} white",
                rgb.len()
            );
            // Both series' colours are there (lines, markers, legend).
            for s in &c.series {
                let (r, g, b) = s.style.color;
                let n = rgb.iter().filter(|p| **p == [r, g, b]).count();
                assert!(n > 50, "{}: {n} pixels of its colour", s.label);
            }
            // Text: the title row (top 30 px) has dark glyph pixels.
            let dark_title = rgb[..480 * 30]
                .iter()
                .filter(|p| p.iter().all(|&c| c < 100))
                .count();
            assert!(dark_title > 100, "{dark_title} dark pixels in the title");
        }
    }

    #[test]
    fn bad_charts_are_typed_errors() {
        let mut c = chart(true);
        c.series[0].points.push((0.0, 1.0));
        assert!(matches!(c.render(), Err(PlotError::BadPoint { .. })));
        c.log_x = false;
        c.log_y = false;
        c.series[0].points.push((1.0, f64::NAN));
        assert!(matches!(c.render(), Err(PlotError::BadPoint { .. })));
        c.series.iter_mut().for_each(|s| s.points.clear());
        c.annotations.clear();
        assert!(matches!(c.render(), Err(PlotError::NoPoints)));
        let mut c = chart(false);
        c.size = (0, 100);
        assert!(matches!(c.render(), Err(PlotError::Size { .. })));
        c.size = (MAX_SIDE + 1, 100);
        assert!(matches!(c.render(), Err(PlotError::Size { .. })));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("c.png");
        assert!(matches!(
            chart(false).write_png(&missing),
            Err(PlotError::Write { .. })
        ));
    }

    #[test]
    fn tick_labels_are_short() {
        let cases = [
            (0.0, "0"),
            (0.5, "0.5"),
            (12.5, "12.5"),
            (100.0, "100"),
            (1234.0, "1234"),
            (20_000.0, "20k"),
            (827e6, "827M"),
            (1.5e9, "1.5G"),
            (-3.0, "-3"),
        ];
        for (v, want) in cases {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }
}
