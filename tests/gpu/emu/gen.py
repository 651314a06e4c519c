import re, sys
# Used by tests/gpu/emu/run.sh: rewrites CUDA launches into emu::launch calls.
src = open(sys.argv[1]).read()
pat = re.compile(r'([\w:]+(?:<[\w\s,]*>)?)<<<(.*?)>>>\((.*?)\);', re.S)
out, n = pat.subn(lambda m: f'::emu::launch([&]() {{ {m.group(1)}({m.group(3)}); }}, {m.group(2)});', src)
print(f'// {n} launches rewritten', file=sys.stderr)
open(sys.argv[2], 'w').write('#include "emu.h"\n' + out)
