# Sourced by the other scripts: puts rustup's cargo ahead of Debian's.
# Under sudo, also looks in the invoking user's ~/.cargo.
for d in "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin" /root/.cargo/bin; do
    if [ -x "$d/cargo" ]; then
        PATH="$d:$PATH"
        break
    fi
done
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
    d="$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"
    [ -x "$d/cargo" ] && PATH="$d:$PATH"
fi
export PATH
