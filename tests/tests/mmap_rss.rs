//! Opening the 135M model costs O(header): the mapping is not read, so resident memory
//! grows by far less than the file size.

mod common;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn mapping_and_validating_the_model_keeps_rss_far_below_the_file_size() {
    let path = common::model_path();
    let file_len = std::fs::metadata(&path).unwrap().len();
    let before = rss_bytes();
    let start = std::time::Instant::now();
    let m = glint_format::LoadedGlint::open(&path).unwrap();
    let took = start.elapsed();
    let growth = rss_bytes().saturating_sub(before);
    eprintln!("open+validate {took:?}; RSS growth {growth} bytes for a {file_len}-byte file");
    assert_eq!(m.file().tensors().len(), 272);
    // The header sections (tokenizer ~1.2 MB) are touched; the ~96 MB of weights are not.
    assert!(growth < file_len / 20, "RSS grew {growth} bytes");
}
