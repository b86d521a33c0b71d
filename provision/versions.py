"""The ONE place that says which app versions and images fedi deploys. Exact tags, never `latest`.

Upgrading an app = changing a line here (and reading that release's upgrade notes first).
Checked in late November 2026; the source of each pin is written beside it.
"""

from __future__ import annotations

# Mastodon: the newest release confirmed from the project itself: mastodon/mastodon PR #40517 "Bump
# version to v4.7.2" and mastodon/chart PR #248 "Update mastodon app to v4.7.2" (4.7 is the current
# stable line). Official images: ghcr.io/mastodon/mastodon and, since 4.3, ghcr.io/mastodon/mastodon-streaming.
MASTODON = "v4.7.2"

# Lemmy: github.com/LemmyNet/lemmy tags (0.19.20, July 2026, is the newest stable; 1.0.0 is still in beta)
# and lemmy-ansible's VERSION file (0.19.20), which pins lemmy and lemmy-ui to the same version.
LEMMY = "0.19.20"
LEMMY_UI = "0.19.20"

# pict-rs: git.asonix.dog/asonix/pict-rs releases; Lemmy's docker-compose tracks the 0.5 line
# (lemmy-ansible: docker.io/asonix/pictrs:0.5); 0.5.24 is the newest 0.5 patch release.
PICTRS = "0.5.24"

# mbin: github.com/MbinOrg/mbin tags (v1.10.1, August 2026); images at ghcr.io/mbinorg/mbin,
# whose docs say to pin a release tag in production instead of `latest`.
MBIN = "v1.10.1"

# image refs per app (compose service role -> image)
IMAGES: dict[str, dict[str, str]] = {
    "mastodon": {
        "mastodon": f"ghcr.io/mastodon/mastodon:{MASTODON}",
        "streaming": f"ghcr.io/mastodon/mastodon-streaming:{MASTODON}",
    },
    "lemmy": {
        "lemmy": f"docker.io/dessalines/lemmy:{LEMMY}",
        "lemmy-ui": f"docker.io/dessalines/lemmy-ui:{LEMMY_UI}",
        "pictrs": f"docker.io/asonix/pictrs:{PICTRS}",
    },
    "mbin": {
        "mbin": f"ghcr.io/mbinorg/mbin:{MBIN}",
    },
}

# the app's own version (what manifest.json and `fedi status` report)
APP_VERSIONS: dict[str, str] = {"mastodon": MASTODON, "lemmy": LEMMY, "mbin": MBIN}


def images(app: str) -> dict[str, str]:
    """Pinned image refs for ``app`` (mastodon, lemmy or mbin)."""
    return dict(IMAGES[app])


def app_version(app: str) -> str:
    return APP_VERSIONS[app]
