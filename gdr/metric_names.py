"""The metrics gdr reports, by name: which way is better, and which need the output's phase.

This is the vocabulary of configs (``report.primary``) and reports; it imports nothing heavy, so a misspelt
metric in a config is refused before torch loads. The metrics are computed in `gdr.metrics` (spectral,
waveform and the seed's own) and `gdr.speech_metrics` (PESQ, STOI, DNSMOS, PLCMOS), each under these names.
"""

SPECTRAL_METRICS = ("logmel_l1", "lsd", "lsd_high", "mrstft")
PHASE_METRICS = ("si_sdr", "snr")  # waveform metrics: meaningless for outputs that do not keep the input's phase
SEED_METRICS = ("seed_mse", "seed_snr", "seed_corr")  # the seed experiment's own, unaligned against the input
INTRUSIVE = ("pesq_wb", "stoi", "estoi")
DNSMOS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
SPEECH_METRICS = (*INTRUSIVE, *DNSMOS, "plcmos")

HIGHER_IS_BETTER = {**{name: False for name in SPECTRAL_METRICS}, "si_sdr": True, "snr": True,
                    "seed_mse": False, "seed_snr": True, "seed_corr": True,
                    **{name: True for name in SPEECH_METRICS}}
