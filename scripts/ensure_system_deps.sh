#!/usr/bin/env bash
# System packages pixelkit needs beyond PyPI:
#  - a Java runtime: pycocoevalcap's PTB tokenizer and METEOR run on the JVM;
#  - Chromium: the demo's end-to-end test drives it headless through Playwright.
# Installs them with apt-get when missing and we are root; otherwise says what to install.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "pixelkit needs these system packages: ${missing[*]}" >&2
  echo "install them (e.g. sudo apt-get install ${missing[*]}) and re-run" >&2
  exit 1
fi
