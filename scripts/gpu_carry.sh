#!/usr/bin/env bash
# Runs HERE (a Debian/Ubuntu machine with apt and network), not on the GPU machine: fills gpu_carry/
# (git-ignored) with the build dependencies the GPU machine may lack, since it has no network:
# PCRE2, nlohmann-json and GoogleTest headers/libraries and a pkg-config (pkgconf) binary, taken from
# this machine's apt repositories with `apt-get download` and unpacked with `dpkg -x` into
# gpu_carry/root. scripts/gpu.sh points CMake at them. Carry the folder with the device call
# (carry: ["gpu_carry"]). Result: ~5 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=gpu_carry
pkgs=(libpcre2-dev libpcre2-8-0 nlohmann-json3-dev libgtest-dev pkgconf-bin libpkgconf3)

rm -rf "$carry" gpu_carry_b
mkdir -p "$carry/debs" "$carry/root"
# apt-get download writes into the current directory; _apt may not be able to write there, which
# only costs a warning (the download then runs unsandboxed).
(cd "$carry/debs" && apt-get download -q "${pkgs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
for p in "${pkgs[@]}"; do
  compgen -G "$carry/debs/${p}_*.deb" >/dev/null || { echo "gpu_carry: failed to download $p" >&2; exit 1; }
done
{
  echo "# gpu_carry: made by scripts/gpu_carry.sh on $(date -u +%Y-%m-%dT%H:%MZ) from $(. /etc/os-release && echo "$PRETTY_NAME")"
  for deb in "$carry"/debs/*.deb; do basename "$deb"; done
} >"$carry/MANIFEST"
for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" "$carry/root"; done
rm -rf "$carry/debs"

multiarch=usr/lib/x86_64-linux-gnu
# The .pc files say prefix=/usr; make them relative to where they lie (pkgconf expands ${pcfiledir}).
sed -i 's|^prefix=/usr$|prefix=${pcfiledir}/../../..|' "$carry/root/$multiarch"/pkgconfig/libpcre2-*.pc
# Only libpcre2-8 (shared) is linked; the static and 16/32-bit variants, docs and man pages are dead weight.
rm -f "$carry/root/$multiarch"/libpcre2-{16,32,posix}* "$carry/root/$multiarch"/libpcre2-8.a \
  "$carry/root/$multiarch"/pkgconfig/libpcre2-{16,32,posix}.pc
rm -rf "$carry/root/usr/share/doc" "$carry/root/usr/share/man" "$carry/root/usr/share/lintian" "$carry/root/usr/bin/pcre2-config"
# Plain files instead of symlinks (libpcre2-8.so -> .so.0.11.2 ...), in case a transfer drops links.
# Dangling ones (usr/src/gtest points at the googletest source package) are dropped.
while IFS= read -r link; do
  target=$(readlink -f "$link" || true)
  rm "$link"
  if [ -n "$target" ] && [ -f "$target" ]; then cp "$target" "$link"; fi
done < <(find "$carry/root" -type l)

# Models for the GPU tests: stories260K whole; the SmolLM2 GGUF (98 MB) split in two, since one device
# call carries at most 64 MiB (with the working tree): the first 40 MiB here, the rest in gpu_carry_b/
# (carried by a second call while the machine is warm; scripts/gpu.sh joins and checks them). 40 MiB
# leaves room beside gpu_carry/ for the CUTLASS wheel (third_party/download, ~6 MB) that the build needs.
mkdir -p "$carry/models" gpu_carry_b
shared=${NIBBLE_SHARED_DATA:-../shared/data}
cp "$shared"/stories260K/stories260K.bin "$shared"/stories260K/tok512.* "$carry/models/"
mkdir -p gpu_carry_b/text  # for gpu.sh qppl and qtable (perplexity of quantized models on the GPU; calibration)
cp "$shared"/text/wikitext-2-raw.test.txt "$shared"/text/wikitext-2-raw.valid.txt gpu_carry_b/text/
smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smol" ]; then
  head -c 41943040 "$smol" >"$carry/models/smollm2.part_a"
  tail -c +41943041 "$smol" >gpu_carry_b/smollm2.part_b
  sha256sum "$smol" | cut -d' ' -f1 >"$carry/models/smollm2.sha256"
else
  echo "gpu_carry: $smol not found (run scripts/setup.sh); the SmolLM2 GPU tests will skip" >&2
fi
echo "gpu_carry: $(du -sh "$carry" | cut -f1) in $carry/ ($(find "$carry/root" -type f | wc -l) files), gpu_carry_b: $(du -sh gpu_carry_b | cut -f1)"
