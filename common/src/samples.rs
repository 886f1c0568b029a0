//! Small, well-formed sample files: the `sluice bench` corpus writes them, and the tests use them.

/// A minimal, valid PDF: one page per text, each `size` points, Helvetica.
pub fn minimal_pdf(texts: &[&str], size: (f32, f32), title: &str) -> Vec<u8> {
    let streams: Vec<String> = texts.iter().map(|text| format!("BT /F1 18 Tf 36 {} Td ({text}) Tj ET", size.1 - 72.0)).collect();
    pdf(&streams, size, title)
}

/// A text document: one page per list of lines, set in 10-point Helvetica
/// from the top margin down, as a word processor's export looks to pdfium.
pub fn text_pdf(pages: &[Vec<String>], size: (f32, f32), title: &str) -> Vec<u8> {
    let escape = |line: &str| line.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
    let streams: Vec<String> = pages
        .iter()
        .map(|lines| {
            let body: Vec<String> = lines.iter().map(|l| format!("({}) Tj T*", escape(l))).collect();
            format!("BT /F1 10 Tf 12 TL 54 {} Td {} ET", size.1 - 60.0, body.join(" "))
        })
        .collect();
    pdf(&streams, size, title)
}

/// A PDF of one page of `size` points, filled with the color `rgb` (each
/// 0 to 1), with a line of text on it.
pub fn filled_pdf(rgb: [f32; 3], size: (f32, f32), title: &str) -> Vec<u8> {
    let [r, g, b] = rgb;
    let stream = format!("{r} {g} {b} rg 0 0 {} {} re f 0 g BT /F1 18 Tf 36 {} Td (A page in color) Tj ET", size.0, size.1, size.1 - 72.0);
    pdf(&[stream], size, title)
}

/// A PDF of one page per content stream.
fn pdf(streams: &[String], size: (f32, f32), title: &str) -> Vec<u8> {
    let n = streams.len();
    let font = 3 + 2 * n; // object numbers: 1 catalog, 2 pages, pages/contents, font, info
    let info = font + 1;
    let mut objects: Vec<String> = Vec::new();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
    for (i, stream) in streams.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Contents {} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>",
            size.0, size.1, 4 + 2 * i
        ));
        objects.push(format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()));
    }
    objects.push("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into());
    objects.push(format!("<< /Title ({title}) /Author (sluice tests) >>"));
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}
