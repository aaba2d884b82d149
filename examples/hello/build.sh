#!/usr/bin/env bash
# Builds the example pipeline package, examples/hello/hello-1.0.0.tar.gz, from Debian's
# busybox-static (nothing is downloaded): an LXD image (metadata.yaml + rootfs/ with busybox,
# its applets and a tiny init), a manifest, a form and a README. The build is reproducible
# (fixed mtimes and owners, sorted names), so the image keeps its fingerprint across builds.
# Prints the package's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
busybox=$(command -v busybox || true)
[ -x /bin/busybox ] && busybox=/bin/busybox
[ -n "$busybox" ] || { echo "build.sh: busybox-static is not installed" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/image/rootfs
mkdir -p "$root"/{bin,sbin,etc,tmp,root,pipeline} "$work/package"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  case $applet in busybox|init|*/*) ;; *) ln -s busybox "$root/bin/$applet" ;; esac
done
cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
# PID 1 of a run container: stays up until LXD stops it (SIGPWR) or it is killed.
trap 'exit 0' PWR TERM INT
while :; do /bin/busybox sleep 3600 & wait $!; done
INIT
cat > "$root/pipeline/run.sh" <<'RUN'
#!/bin/sh
# The hello pipeline: greets, counts the lines, words and bytes of every input file, and
# reports its progress as it goes.
set -e
greeting=$(sed -n 's/.*"greeting": *"\([^"]*\)".*/\1/p' "$PIRUS_CONFIG_FILE")
echo "${greeting:-hello} from run $PIRUS_RUN_ID"
mkdir -p "$PIRUS_OUTPUTS/counts"
total=$(ls "$PIRUS_INPUTS" | grep -vc '^config.json$' || true)
i=0
for input in "$PIRUS_INPUTS"/*; do
  name=$(basename "$input")
  [ "$name" = config.json ] && continue
  i=$((i + 1))
  wc "$input" | awk '{print $1" lines, "$2" words, "$3" bytes"}' > "$PIRUS_OUTPUTS/counts/$name"
  echo "counted $name: $(cat "$PIRUS_OUTPUTS/counts/$name")"
  echo "{\"value\": $i, \"min\": 0, \"max\": $total, \"label\": \"$i / $total files\"}" > "$PIRUS_PROGRESS_FILE"
  sleep 0.2
done
echo "${greeting:-hello}, world" > "$PIRUS_OUTPUTS/greeting.txt"
echo "{\"value\": 1, \"label\": \"done\"}" > "$PIRUS_PROGRESS_FILE"
RUN
chmod 755 "$root/sbin/init" "$root/pipeline/run.sh"
cat > "$work/image/metadata.yaml" <<'META'
architecture: x86_64
creation_date: 1700000000
properties:
  description: Pirus hello pipeline (busybox)
  os: busybox
META

tar_reproducible() { # dir output members...
  local dir=$1 out=$2; shift 2
  tar -C "$dir" --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - "$@" | gzip -n > "$out"
}
tar_reproducible "$work/image" "$work/package/image.tar.gz" metadata.yaml rootfs
cp "$here/manifest.json" "$here/form.json" "$here/README.md" "$work/package/"
out=$here/hello-1.0.0.tar.gz
tar_reproducible "$work/package" "$out" manifest.json form.json README.md image.tar.gz
echo "$out"
