//! `zmesh-control`: the controller binary.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("zmesh-control: not wired yet");
    std::process::exit(2);
}
