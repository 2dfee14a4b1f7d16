#!/usr/bin/env bash
# Replaces the Swagger UI files that /docs serves (src/vers_orchestrator/api/swagger_ui/)
# with those of swagger-ui-dist VERSION from the npm registry: the files Litestar would
# otherwise load from a CDN, with their licence. Needs npm; run it by hand, then commit.
set -euo pipefail

version=${1:?usage: scripts/update-swagger-ui.sh VERSION (e.g. 5.35.0)}
target="$(cd "$(dirname "$0")/.." && pwd)/src/vers_orchestrator/api/swagger_ui"
files=(
    LICENSE NOTICE package.json favicon-32x32.png swagger-ui.css
    swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt
    swagger-ui-standalone-preset.js swagger-ui-standalone-preset.js.LICENSE.txt
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
find "$target" -mindepth 1 -delete 2>/dev/null || mkdir -p "$target"
for file in "${files[@]}"; do
    cp "$work/package/$file" "$target/$file"
done
echo "swagger-ui-dist $version in $target" >&2
