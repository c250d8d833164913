"""A chat script written for llama-cpp-python runs with only its import changed."""

import os
import subprocess
import sys
import textwrap

from conftest import ROOT

SCRIPT = textwrap.dedent('''
    import sys
    from llama_cpp import Llama

    llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=1, n_gpu_layers=-1, seed=1337, verbose=False)

    output = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"], echo=True)
    print(output["choices"][0]["text"])

    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for question in ["Hello!", "Tell me a joke."]:
        messages.append({"role": "user", "content": question})
        reply = ""
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=24, stream=True):
            delta = chunk["choices"][0]["delta"]
            if "content" in delta:
                reply += delta["content"]
                print(delta["content"], end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})

    result = llm.create_chat_completion(messages=messages, temperature=0.7, max_tokens=16)
    print(result["choices"][0]["message"]["role"], result["usage"]["total_tokens"])
    llm.close()
    print("done")
''')


def test_llama_cpp_python_script_runs_with_the_import_changed(tmp_path, mtp_model_path):
    script = tmp_path / "chat_script.py"
    script.write_text(SCRIPT.replace("from llama_cpp import Llama", "from qwen35 import Llama"))
    r = subprocess.run([sys.executable, str(script), mtp_model_path], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Q: Name the planets in the solar system? A: ")
    assert r.stdout.rstrip().endswith("done")
    assert "assistant" in r.stdout


def test_examples_chat_one_shot(mtp_model_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "chat.py"), mtp_model_path,
                        "-p", "Hello!", "-n", "16", "--threads", "1", "--seed", "3", "--cpu"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() or r.stderr.strip()
