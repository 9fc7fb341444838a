//! The `leaktrace` command: parses arguments and hands over to the library.
use std::process::ExitCode;

use clap::Parser as _;
use leaktrace::app::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _: Result<_, _> = err.print();
                return ExitCode::SUCCESS;
            }
            // One line: the first line of clap's message, without its
            // prefix, joined with the indented lines that continue it (the
            // missing arguments, the possible values).
            let text = err.to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("invalid arguments");
            let mut message = first.strip_prefix("error: ").unwrap_or(first).to_string();
            for more in lines.take_while(|l| l.starts_with(char::is_whitespace)) {
                message.push(' ');
                message.push_str(more.trim());
            }
            eprintln!("leaktrace: error: {message} (see leaktrace --help)");
            return ExitCode::from(2);
        }
    };
    match leaktrace::app::main(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            // The whole cause chain, on one line.
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("leaktrace: error: {}", chain.join(": "));
            ExitCode::from(1)
        }
    }
}
