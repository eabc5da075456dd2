"""Which complexity band of NCA rules suits which language domain (the paper's third finding).

    python -m ncalm.experiment --config=configs/experiments/bands.py:code_cpu \
        --workdir=/tmp/bands_code_cpu
    python -m ncalm.band_report --experiment=code=/tmp/bands_code_cpu --out=/tmp/bands

Arms: scratch and one NCA stage 1 per band, each through the domain's stage 2, over seeds
(the layout, resuming and tables of `ncalm.experiment`; rerun the same command to continue).
`ncalm.band_report` then draws every domain's stage-2 loss by band, relative to scratch, in
one figure (docs/transfer.md, "The band-by-domain study").

VARIANT = DOMAIN[_cpu][_fresh], DOMAIN one of code, math, web:
  DOMAIN        paper scale: the paper's bands of the 12×12, 10-state family in gzip ratios
                (20–30%, 30–40%, 40–50%, 50%+), stage 1 as configs/stage1.py:nca_50 with the
                band changed, stage 2 as configs/text_DOMAIN.py; the paper reports that code
                does best with 30–40% and web text and math with 50%+.
  DOMAIN_cpu    CPU scale: stage 1 as configs/stage1.py:nca_50_cpu (the 8×8, 2-state family a
                2-layer model learns in context) with four bands given as quantiles of that
                family — 70% of its rules die out or freeze (gzip < 0.055), so the bands split
                the living 30% into quarters: q70–77.5, q77.5–85, q85–92.5, q92.5–100 —
                stage 2 as configs/text_DOMAIN.py:cpu; seeds 0, 1, 2. Code: about 35 minutes
                a seed on 2 cores.
  ..._fresh     the same arms with a fresh in-band rule for every sequence, chosen inside the
                step (data.rules='fresh') instead of a bank of rules sampled before training.

The bands read the family's calibration in configs/calibration (`python -m ncalm.calibrate`).
"""
import ml_collections

from ncalm import config_lib

DOMAINS = ('code', 'math', 'web')
PAPER_BANDS = {'nca_20_30': (0.2, 0.3), 'nca_30_40': (0.3, 0.4), 'nca_40_50': (0.4, 0.5),
               'nca_50': (0.5, 1.0)}
CPU_BANDS = {'nca_q70_77': (0.70, 0.775), 'nca_q77_85': (0.775, 0.85),
             'nca_q85_92': (0.85, 0.925), 'nca_q92_100': (0.925, 1.0)}
FRESH_CANDIDATES = 72  # the narrowest band keeps 6.6% of rules: 72 leave < 1% of rows short


def get_config(variant: str = 'code_cpu') -> ml_collections.ConfigDict:
  domain, *tags = variant.split('_')
  if domain not in DOMAINS or not set(tags) <= {'cpu', 'fresh'} or len(set(tags)) != len(tags):
    raise ValueError(f'Unknown variant {variant!r} of experiments/bands: use DOMAIN[_cpu]'
                     f'[_fresh] with DOMAIN one of {DOMAINS}.')
  cpu, fresh = 'cpu' in tags, 'fresh' in tags
  bands = CPU_BANDS if cpu else PAPER_BANDS
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)               # every arm runs each seed (model init, rules, data order)
  c.arms = ('scratch', *bands)      # table rows, in order; 'scratch' has no stage 1
  c.stage1 = ml_collections.ConfigDict()  # arm → its stage-1 run config
  for arm, band in bands.items():
    s1 = config_lib.load_file('../stage1.py:nca_50' + ('_cpu' if cpu else ''), __file__)
    s1.data.band = band
    s1.data.band_units = 'quantile' if cpu else 'gzip'
    if fresh:
      s1.data.rules = 'fresh'
      s1.data.candidates = FRESH_CANDIDATES
    c.stage1[arm] = s1
  c.stage2 = config_lib.load_file(f'../text_{domain}.py' + (':cpu' if cpu else ''), __file__)
  if cpu:
    c.stage2.evals.heldout.every = 25  # a fine curve: the step reaching scratch's final loss
    c.stage2.checkpoint_every = 100
  c.ablations = ml_collections.ConfigDict()   # none: the bands are the question
  return c
