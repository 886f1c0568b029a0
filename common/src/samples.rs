//! Small, well-formed sample files: the `sluice bench` corpus writes them, and the tests use them.

/// A minimal, valid PDF: one page per text, each `size` points, Helvetica.
pub fn minimal_pdf(texts: &[&str], size: (f32, f32), title: &str) -> Vec<u8> {
    let n = texts.len();
    let font = 3 + 2 * n; // object numbers: 1 catalog, 2 pages, pages/contents, font, info
    let info = font + 1;
    let mut objects: Vec<String> = Vec::new();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
    for (i, text) in texts.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Contents {} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>",
            size.0, size.1, 4 + 2 * i
        ));
        let stream = format!("BT /F1 18 Tf 36 {} Td ({text}) Tj ET", size.1 - 72.0);
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
