#!/usr/bin/env bash
# Fetch the JavaScript that the rendered book loads (MathJax, RequireJS, the ipywidgets HTML manager)
# from the npm registry into book/_static/vendor/, so that the built site works with no internet.
# _config.yml points mathjax_path and nb_ipywidgets_js at these copies. Idempotent: a second run
# with the same pinned versions does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(mathjax@3.2.2 requirejs@2.3.8 @jupyter-widgets/html-manager@1.0.15)
VENDOR=book/_static/vendor
STAMP="$VENDOR/.fetched"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PACKAGES[*]}" ]]; then
    echo "book assets: already in $VENDOR (${PACKAGES[*]})"
    exit 0
fi
command -v npm >/dev/null || { echo "npm not found: install Node.js and npm (Debian: apt-get install -y nodejs npm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "book assets: fetching ${PACKAGES[*]} from the npm registry"
npm pack --silent --pack-destination "$tmp" "${PACKAGES[@]}" >/dev/null
for tarball in "$tmp"/*.tgz; do
    mkdir -p "${tarball%.tgz}"
    tar -xzf "$tarball" -C "${tarball%.tgz}"
done

rm -rf "$VENDOR"
mkdir -p "$VENDOR/html-manager"
# MathJax loads its fonts and TeX extensions relative to its own script, so keep the es5 tree whole.
cp -r "$tmp"/mathjax-*/package/es5 "$VENDOR/mathjax"
cp "$tmp"/requirejs-*/package/require.js "$VENDOR/require.js"
# embed-amd.js finds its icon fonts next to itself; the other bundles and source maps are not used.
manager="$(echo "$tmp"/jupyter-widgets-html-manager-*/package/dist)"
cp "$manager/embed-amd.js" "$manager"/*.{woff,woff2,ttf,eot,svg} "$VENDOR/html-manager/"

for f in mathjax/tex-chtml.js require.js html-manager/embed-amd.js; do
    [[ -s "$VENDOR/$f" ]] || { echo "book assets: $VENDOR/$f is missing after the fetch" >&2; exit 1; }
done
echo '*' > "$VENDOR/.gitignore"   # build output: never committed
echo "${PACKAGES[*]}" > "$STAMP"
echo "book assets: done ($(du -sh "$VENDOR" | cut -f1) in $VENDOR)"
