"""The Debian speech packages' layouts, rebuilt with short synthetic clips, for tests of the
real-voice pool (``galr_jax.data.pool --system-root``) that must not need the packages."""

import numpy as np
import soundfile as sf

from galr_jax.data import voices

RATE = 8000


def _clip(rng, seconds, rate, f0):
    """A voiced burst at ``f0`` with silence around it (so trimming has work to do)."""
    t = np.arange(int(seconds * rate)) / rate
    voiced = 0.3 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 4))
    voiced *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) + 0.01 * rng.normal(size=t.size)
    pad = np.zeros(int(0.2 * rate))
    return np.concatenate([pad, voiced, pad]).astype(np.float32)


def make_system_root(root, skip=()):
    """The packages' folders with a few clips each (languages of every split)."""
    rng = np.random.default_rng(0)

    def write(path, rate=RATE, seconds=0.5, f0=200.0, fmt="WAV"):
        path = root / path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        signal = _clip(rng, seconds, rate, f0)
        if fmt == "RAW":
            sf.write(path, signal, rate, format="RAW", subtype="PCM_16")
        else:
            sf.write(path, signal, rate, format=fmt, subtype="VORBIS" if fmt == "OGG" else None)

    if "asterisk" not in skip:
        for k, s in enumerate(voices.ASTERISK_SPEAKERS):
            for i in range(3):
                write(f"/usr/share/asterisk/sounds/{s.location}/digits/{i}.wav", f0=190 + 5 * k)
        write("/usr/share/asterisk/sounds/es_MX_f_Allison/digits/1.wav")
    if "klettres" not in skip:
        for lang in ("en", "fr", "de", "da", "cs", "hu"):
            for i in range(3):
                write(f"/usr/share/klettres/{lang}/alpha/{i}.ogg", rate=44100, fmt="OGG")
    if "ktuberling" not in skip:
        for lang in ("en", "it", "nl", "gl", "sr", "sr@latin"):
            for i in range(3):
                write(f"/usr/share/ktuberling/sounds/{lang}/w{i}.ogg", rate=22050, fmt="OGG",
                      f0=110.0)
    if "kajongg" not in skip:
        for folder in ("female1", "male1", "de/female2", "de/male2"):
            for i in range(2):
                write(f"/usr/share/kajongg/voices/{folder}/{i}.ogg", rate=44100, fmt="OGG")
    if "codec2" not in skip:
        write("/usr/share/codec2/wav/forig.wav", seconds=1.5)
        write("/usr/share/codec2/raw/hts1.raw", seconds=2.0, f0=120.0, fmt="RAW")
        write("/usr/share/codec2/raw/speech_orig_16k.wav", rate=16000)
        write("/usr/share/codec2/raw/sine1k_2Hz_spread.raw", fmt="RAW")  # not a talker
    if "festvox" not in skip:
        for i in range(4):
            write(f"/usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav/ru_{i:04d}.wav",
                  rate=16000, seconds=1.5, f0=110.0)
    if "pocketsphinx" not in skip:
        for i in range(2):
            write(f"/usr/share/pocketsphinx/test/data/librivox/s_{i}.wav", rate=16000)
    return root
