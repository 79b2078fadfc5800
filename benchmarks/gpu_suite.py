r"""The prepared GPU suites: everything a lent GPU window runs, prepared here and run there once.

A window is about 15 minutes of device time, a cold start included, at most 10 minutes a command,
and it carries the working tree (no ``.git``, no ``../shared``, no installed packages). So:

Here (CPU), on a clean checkout of the commit to measure:
    .venv/bin/python benchmarks/gpu_suite.py prepare
  writes ``.gpu_carry/`` (ignored by git): the manifest (the commit and the sha256 of every tracked
  file), the ml-collections wheel (the device image lacks it; embedjax.train imports it), the
  wheels of the JAX peer representax and of what the image lacks for it (``PEER_WHEELS``), and
  the SciFact corpus plus MiniLM's tokenizer for the real-text encoding run
  (``encode_gpu.py --prepare-texts``).
There (``run`` of the device tool, repository root, ``carry=['.gpu_carry']``):
    python3 benchmarks/gpu_suite.py run A --out $OUT    # training step (BERT shapes)
    python3 benchmarks/gpu_suite.py run E --out $OUT    # the loader on the host, then encoding
                                                        # (BERT shapes, SciFact text)
    python3 benchmarks/gpu_suite.py run B --out $OUT    # the ~0.6B decoder, full and LoRA steps
    python3 benchmarks/gpu_suite.py run C --out $OUT    # LIMIT critical-n at d = 32, once
    python3 benchmarks/gpu_suite.py run R --out $OUT    # remat policies and XLA flags, measured
  Each suite installs the carried wheels into /tmp/site, checks the tree against the manifest, runs
  its benchmarks one after another (each in its own process, each under a time limit so that the
  suite ends within ``SUITE_SECONDS``), and writes their result files and logs under ``--out``.
  The device has no git: a result file whose provenance has no git state gets the manifest's
  commit, with ``git.verified_by`` saying how it was checked (the sha256 of every tracked file);
  files that differ from the manifest are listed as ``dirty_paths`` (and make the result stale).
Back here:
    .venv/bin/python benchmarks/gpu_suite.py collect FILES_AT
  copies the result files from the folder the device tool returned into results/.

``--smoke`` (``run A --smoke``) runs the same path on a CPU with tiny shapes (the CI test).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / '.gpu_carry'
MANIFEST = 'manifest.json'
WHEELS = ('ml_collections',)  # missing from the device image; pure-Python wheels
# Suite A's 'representax' system (the JAX peer) and what the device image lacks for it (the
# image's package list has equinox, jaxtyping, orbax, scikit-learn, safetensors, ... but not
# these): carried as wheels for the device's Python 3.12 and installed
# into a folder of their own, which only the peer's run appends to sys.path: they fill gaps and
# never shadow the image's own packages. pydantic 2.11 (not the newest) needs only
# typing-extensions >= 4.12.
PEER_WHEELS = ('representax==0.0.2', 'grain==0.2.18', 'array_record==0.8.6', 'pydantic==2.11.7',
               'pydantic_core==2.33.2', 'annotated_types==0.7.0', 'typing_inspection==0.4.1',
               'portpicker==1.6.0')
PEER_SITE = '/tmp/peer_site'
DEVICE_PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64',
                    'manylinux_2_17_x86_64', 'manylinux2014_x86_64')
SUITE_SECONDS = 480           # each suite fits one window with a rerun to spare
# (result file, script, arguments, seconds allowed) per suite, in the order they run.
SUITES = {
    # each script stops starting runs before its own budget ends and rewrites its file after
    # every run, so the suite's limit never leaves it without one. Training and encoding were one
    # suite of 240 + 210 s in the first window: too little once torch.compile runs (and the
    # encoding's real-text PyTorch side was killed at the end of its budget). Two suites of one
    # benchmark each fit one 900-s window together (a cold start of ~30 s, then the second
    # started at once on the warm machine).
    # no dropout on the attention probabilities in either system (hidden dropout stays), so
    # that embedjax's step can take cuDNN's fused attention, which has none
    'A': (('bench_train_gpu.json', 'train_gpu.py',
           ('--attention-dropout', '0', '--time-budget', '400',
            '--representax-site', '{peer_site}'), 410),),
    # E: first the training loader on the GPU host's cores (SciFact title -> text pairs, the
    # carried corpus; grain from the peer's wheels: the image lacks it), about 30 s, then encoding
    'E': (('bench_input_gpu_host.json', 'input_cpu.py',
           ('--texts', '{carry}/scifact_corpus.jsonl.gz', '--tokenizer', '{carry}/tokenizer.json',
            '--site', '{peer_site}'), 60),
          ('bench_encode_gpu.json', 'encode_gpu.py',
           ('--texts', '{carry}/scifact_corpus.jsonl.gz', '--tokenizer', '{carry}/tokenizer.json',
            '--time-budget', '360'), 370)),
    'B': (('bench_decoder_gpu.json', 'decoder_gpu.py', (), 470),),
    # the training step's settings chosen by measurement: each variant of train_gpu.VARIANTS
    # (remat policies, XLA GPU flags) against plain embedjax in the same run, BERT-base first
    # (where remat and GEMM choices weigh most); what the budget leaves goes to MiniLM-L6
    'R': (('bench_train_gpu_variants.json', 'train_gpu.py',
           ('--attention-dropout', '0', '--time-budget', '400', '--models', 'bert_base,minilm_l6',
            '--systems', 'embedjax,embedjax_remat_dots,embedjax_remat_full,embedjax_cublas,'
            'embedjax_command_buffers,embedjax_latency_hiding'), 410),),
}
# Suite C: LIMIT's free-embedding critical-n at d = 32, searched again on the GPU to replace the
# hand-assembled record of results/limit/critical_n.json (experiments/regenerate.py's GPU target
# critical_n runs this command), once per window: a finished run is compared with the committed
# record when that was written by the program on the same device (XLA:GPU's deterministic ops
# are set by the experiment), so a second window checks the first.
CRITICAL_N = ('-m', 'experiments.limit_free_embedding', '--config',
              'configs/limit_free_embedding.py:32', '--config.redo=(32,)')
CRITICAL_N_SECONDS = 450      # one run: an H200 took 37-48 s per probe of d = 32 with
                              # deterministic ops, and a search makes about 6 probes


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _git(*args: str) -> str:
  return subprocess.run(['git', *args], cwd=REPO, check=True, capture_output=True,
                        text=True).stdout


def write_manifest(out: Path) -> dict:
  """{'commit', 'files': {path: sha256}} of the checkout's tracked files; refuses a dirty tree
  (a result is made at a commit)."""
  dirty = _git('status', '--porcelain').strip()
  if dirty:
    raise SystemExit(f'gpu_suite prepare: the tree has uncommitted changes:\n{dirty}')
  files = [p for p in _git('ls-files', '-z').split('\0') if p and (REPO / p).is_file()]
  manifest = {'commit': _git('rev-parse', 'HEAD').strip(),
              'files': {p: _sha256(REPO / p) for p in files}}
  out.mkdir(parents=True, exist_ok=True)
  (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


def verify_tree(manifest: dict, root: Path = REPO) -> list[str]:
  """The manifest's files that are missing or differ under ``root`` (empty: the tree is the
  manifest's commit, as far as tracked files go)."""
  return sorted(p for p, digest in manifest['files'].items()
                if not (root / p).is_file() or _sha256(root / p) != digest)


def stamp_git(result_path: Path, manifest: dict, differ: list[str]) -> bool:
  """Gives a result file made without git the manifest's commit (in place, atomically).
  Returns whether it stamped (a file that has git state of its own is left alone)."""
  record = json.loads(result_path.read_text())
  prov = record.get('provenance')
  if not isinstance(prov, dict) or prov.get('git'):
    return False
  prov['git'] = {'commit': manifest['commit'], 'dirty': bool(differ), 'dirty_paths': differ,
                 'verified_by': f'sha256 of {len(manifest["files"])} tracked files against '
                                f'{CARRY.name}/{MANIFEST} (the device has no git)'}
  prov['git_commit'] = manifest['commit'][:7]
  tmp = result_path.with_name(result_path.name + '.tmp')
  tmp.write_text(json.dumps(record, indent=1))
  os.replace(tmp, result_path)
  return True


def prepare(args) -> None:
  manifest = write_manifest(CARRY)
  wheels = CARRY / 'wheels'
  shutil.rmtree(wheels, ignore_errors=True)
  from importlib.metadata import version
  for name in WHEELS:
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                    '--only-binary=:all:', '--python-version', '3.12', '-d', str(wheels),
                    f'{name}=={version(name)}'], check=True)
  peers = CARRY / 'peer_wheels'
  shutil.rmtree(peers, ignore_errors=True)
  platforms = [a for p in DEVICE_PLATFORMS for a in ('--platform', p)]
  subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                  '--only-binary=:all:', '--python-version', '3.12', '--implementation', 'cp',
                  *platforms, '-d', str(peers), *PEER_WHEELS], check=True)
  subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'encode_gpu.py'), '--prepare-texts',
                  str(Path(args.data_dir) / 'scifact' / 'corpus.jsonl.gz'),
                  str(CARRY / 'scifact_corpus.jsonl.gz')], check=True)
  size = sum(p.stat().st_size for p in CARRY.rglob('*') if p.is_file())
  print(f'{CARRY}: commit {manifest["commit"][:10]}, {len(manifest["files"])} files in the '
        f'manifest, {size / 2**20:.1f} MiB to carry')


def _install_wheels(folder: str = 'wheels', site: str = '/tmp/site') -> str | None:
  """Installs the carried wheels of ``CARRY/folder`` into ``site``; None when none were carried."""
  wheels = sorted((CARRY / folder).glob('*.whl'))
  if not wheels:
    return None
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps',
                  '--no-compile', '--no-cache-dir', '--upgrade', '--target', site,
                  *map(str, wheels)], check=True)
  return site


def suite_command(script: str, extra: tuple, out: Path, peer_site: str | None,
                  smoke: bool) -> list[str]:
  """A suite's command line for ``script``: carried paths filled in; without carried peer
  wheels a flag naming their folder (``--representax-site``, ``--site``) is left out (the peer
  then runs only where it is importable); ``smoke`` leaves out every carried input, that one
  too (the scripts have tiny inputs of their own), and adds ``--smoke``."""
  cmd = [sys.executable, str(REPO / 'benchmarks' / script), '--out', str(out)]
  extra = list(extra)
  while '{peer_site}' in extra and (smoke or not peer_site):  # the flag and its value
    i = extra.index('{peer_site}')
    del extra[i - 1:i + 1]
  cmd += [a.format(carry=CARRY, peer_site=peer_site) for a in extra]
  if smoke:
    cmd = [c for c in cmd if not c.startswith(str(CARRY))]
    cmd = [c for c in cmd if c not in ('--texts', '--tokenizer')] + ['--smoke']
  return cmd


def run_suite(args) -> dict:
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  started = time.time()
  manifest_path = CARRY / MANIFEST
  manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
  differ = verify_tree(manifest) if manifest else None
  env = dict(os.environ, PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1')
  site = None if args.smoke else _install_wheels()
  peer_site = None if args.smoke else _install_wheels('peer_wheels', PEER_SITE)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (site, str(REPO), env.get('PYTHONPATH')) if p)
  report = {'suite': args.suite, 'smoke': args.smoke, 'commit': manifest and manifest['commit'],
            'tree_differs_from_manifest': differ, 'runs': {}}
  if args.suite == 'C':
    report.update(run_critical_n(args, out, env, manifest, differ))
  for result, script, extra, seconds in SUITES.get(args.suite, ()):
    left = SUITE_SECONDS - (time.time() - started)
    limit = int(min(seconds, left)) if not args.smoke else 900
    cmd = suite_command(script, extra, out / result, peer_site, args.smoke)
    print(f'== {script} (limit {limit} s): {" ".join(cmd)}', flush=True)
    t0 = time.time()
    with open(out / f'{Path(script).stem}.log', 'w') as log:
      try:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=max(limit, 1)).returncode
      except subprocess.TimeoutExpired:
        rc = 'timeout'
    stamped = (out / result).is_file() and manifest is not None and stamp_git(
        out / result, manifest, differ)
    report['runs'][script] = {'rc': rc, 'seconds': round(time.time() - t0, 1),
                              'result': result if (out / result).is_file() else None,
                              'git_stamped_from_manifest': stamped}
    print(f'   rc={rc} in {report["runs"][script]["seconds"]} s', flush=True)
  report['seconds'] = round(time.time() - started, 1)
  (out / f'suite_{args.suite}.json').write_text(json.dumps(report, indent=1))
  print(json.dumps(report, indent=1))
  return report


def _same_search(a: dict, b: dict) -> bool:
  """Whether two searches of one dimension probed the same n with the same outcomes (solved,
  steps, losses, violations, margins), times and provenance aside."""
  def probes(run):
    return {n: {k: v for k, v in p.items() if k != 'seconds'} for n, p in run['attempts'].items()}
  return probes(a) == probes(b) and a['critical_n'] == b['critical_n']


def run_critical_n(args, out: Path, env: dict, manifest, differ) -> dict:
  """Suite C: the d = 32 search once (``--smoke``: d = 4, twice), each run from the record the
  run before it left (the committed file for the first). A run that did not finish leaves that
  record as it was and checks nothing. A finished run is compared with the record it started
  from when that record's search was written by the program on the same kind of device (not by
  hand): equal probes say the search is deterministic there."""
  files = REPO / 'results' / 'limit'
  stem, dim, runs = 'critical_n', '32', ('first',)
  cmd = [sys.executable, *CRITICAL_N]
  if args.smoke:  # d = 4 with a tiny budget, into a scratch folder
    cmd = [sys.executable, '-m', 'experiments.limit_free_embedding', '--config',
           'configs/limit_free_embedding.py:4', '--config.redo=(4,)',
           '--config.name=critical_n.quick', '--config.protocol.max_steps=200',
           '--config.protocol.patience=100',
           f'--config.out_dir={out / "smoke_results"}']
    files, stem, dim, runs = out / 'smoke_results', 'critical_n.quick', '4', ('first', 'again')
    files.mkdir(parents=True, exist_ok=True)
    (files / f'{stem}.json').write_text('{}')
  committed = (files / f'{stem}.json').read_bytes()
  report = {'runs': {}, 'critical_n': [], 'deterministic': None}
  before = json.loads(committed)
  for name in runs:
    dest = out / ('limit' if name == 'first' else f'limit_{name}')
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / f'critical_n_{name}.log', 'w') as log:
      try:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=900 if args.smoke else CRITICAL_N_SECONDS).returncode
      except subprocess.TimeoutExpired:
        rc = 'timeout'
    report['runs'][name] = {'rc': rc, 'seconds': round(time.time() - t0, 1)}
    if rc != 0:  # the file holds the record it started from: nothing was measured
      report['why_not_compared'] = f'run {name!r} did not finish (rc {rc})'
      break
    for ext in ('json', 'md', 'png'):
      if (files / f'{stem}.{ext}').is_file():
        shutil.copyfile(files / f'{stem}.{ext}', dest / f'critical_n.{ext}')
    if manifest is not None:
      stamp_git(dest / 'critical_n.json', manifest, differ)
    after = json.loads((dest / 'critical_n.json').read_text())
    report['critical_n'].append(after['critical_n'][dim])
    why = _why_not_comparable(before, after, dim)
    if why:
      report['why_not_compared'] = why
    else:
      same = _same_search(before['runs'][dim], after['runs'][dim])
      report['deterministic'] = same if report['deterministic'] is None else (
          report['deterministic'] and same)
      report.pop('why_not_compared', None)
    before = after
  if not args.smoke:  # the device's copy of the committed file, as it was
    (files / f'{stem}.json').write_bytes(committed)
  return report


def _why_not_comparable(before: dict, after: dict, dim: str) -> str | None:
  """Why a search of ``dim`` cannot be checked against the one before it (None: it can)."""
  old = before.get('runs', {}).get(dim)
  if old is None:
    return f'no earlier search of d = {dim}'
  if old.get('note') or 'provenance' not in old:
    return f'the earlier search of d = {dim} was assembled by hand, not written by the program'
  if old.get('device') != after['runs'][dim].get('device'):
    return (f'the earlier search of d = {dim} ran on {old.get("device")}, this one on '
            f'{after["runs"][dim].get("device")}')
  return None


def collect(args) -> None:
  src = Path(args.files_at)
  for result in (r for suite in SUITES.values() for r, *_ in suite):
    found = sorted(src.rglob(result))
    if found and json.loads(found[0].read_text()).get('smoke'):
      print(f'{found[0]}: a --smoke run, not a result; not copied')
    elif found:
      shutil.copyfile(found[0], REPO / 'results' / result)
      print(f'results/{result} <- {found[0]}')
  first = sorted(src.rglob('limit/critical_n.json'))
  if first:  # suite C: the first of its two runs (the report says whether the second agreed)
    for ext in ('json', 'md', 'png'):
      if first[0].with_suffix(f'.{ext}').is_file():
        shutil.copyfile(first[0].with_suffix(f'.{ext}'), REPO / 'results' / 'limit' /
                        f'critical_n.{ext}')
    print(f'results/limit/critical_n.* <- {first[0].parent}')


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  pp = sub.add_parser('prepare', help='write .gpu_carry/ here')
  pp.add_argument('--data-dir', default=str(REPO.parent / 'shared' / 'data'))
  pr = sub.add_parser('run', help='run a suite (on the device)')
  pr.add_argument('suite', choices=[*sorted(SUITES), 'C'])
  pr.add_argument('--out', required=True, help='folder for result files and logs ($OUT)')
  pr.add_argument('--smoke', action='store_true', help='tiny shapes on a CPU (the CI check)')
  pc = sub.add_parser('collect', help='copy returned result files into results/')
  pc.add_argument('files_at')
  args = p.parse_args(argv)
  {'prepare': prepare, 'run': run_suite, 'collect': collect}[args.cmd](args)


if __name__ == '__main__':
  main()
