# Steward runner component for Datto RMM.
#
# Import it as a Datto RMM component named "Steward Runner" (category Scripts, PowerShell) with
# three input variables of type String: steward_url, steward_job_id, steward_job_token. Datto
# passes component variables to the script as environment variables of the same name.
#
# What it does, and nothing else:
#  1. GET  {steward_url}/v1/runner/jobs/{steward_job_id}         (Bearer steward_job_token)
#     The answer is the script of one Steward op: fixed text per op and version whose only
#     varying line is its base64 payload. The token works once for this call.
#  2. Runs that script in a fresh PowerShell (locally; the script itself uses Invoke-Command
#     when it must reach a server that has no RMM agent).
#  3. POST {steward_url}/v1/runner/jobs/{steward_job_id}/result  (the same token, once)
#     {stdout, stderr, exit_code, result}: `result` is the script's one STEWARD-RESULT line,
#     parsed. Steward reads stdout itself; if this post fails, Steward still reads the job's
#     stdout through the Datto API.
# The token is never written to the output. HTTPS is required outside a lab.

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12

$url = [string]$env:steward_url
$id = [string]$env:steward_job_id
$token = [string]$env:steward_job_token
if ($url -eq '' -or $id -eq '' -or $token -eq '') {
    Write-Output 'Steward runner: the job has no steward_url, steward_job_id or steward_job_token; it must be started by Steward.'
    exit 2
}
if ($id -notmatch '^rj_[0-9a-f]{32}$') {
    Write-Output 'Steward runner: steward_job_id is not a Steward job id.'
    exit 2
}
$base = $url.TrimEnd('/') + '/v1/runner/jobs/' + $id
$headers = @{ Authorization = ('Bearer ' + $token) }

try {
    $script = Invoke-RestMethod -Method Get -Uri $base -Headers $headers -UseBasicParsing
} catch {
    # The message names TLS trust or connection failures, which Steward diagnoses.
    Write-Output ('Steward runner: fetching the script failed: ' + $_.Exception.Message)
    exit 3
}

$file = Join-Path $env:TEMP ('steward-' + $id + '.ps1')
$out = Join-Path $env:TEMP ('steward-' + $id + '.out')
$err = Join-Path $env:TEMP ('steward-' + $id + '.err')
try {
    [IO.File]::WriteAllText($file, [string]$script, (New-Object Text.UTF8Encoding $true))
    $p = Start-Process -FilePath 'powershell.exe' -Wait -PassThru -NoNewWindow `
        -ArgumentList @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', $file) `
        -RedirectStandardOutput $out -RedirectStandardError $err
    $stdout = [IO.File]::ReadAllText($out)
    $stderr = [IO.File]::ReadAllText($err)
    $code = $p.ExitCode
} finally {
    Remove-Item -LiteralPath $file, $out, $err -Force -ErrorAction SilentlyContinue
}

# The script's own output is what Datto keeps as the job's stdout (Steward's fallback).
Write-Output $stdout
if ($stderr -ne '') { Write-Error $stderr -ErrorAction Continue }

$line = ($stdout -split "`r?`n" | Where-Object { $_.StartsWith('STEWARD-RESULT ') } | Select-Object -First 1)
$parsed = $null
if ($null -ne $line) {
    try { $parsed = ($line.Substring(15) | ConvertFrom-Json) } catch { $parsed = $null }
}
$body = [ordered]@{ stdout = $stdout; stderr = $stderr; exit_code = $code; result = $parsed }
try {
    $json = ConvertTo-Json -InputObject $body -Depth 20 -Compress
    Invoke-RestMethod -Method Post -Uri ($base + '/result') -Headers $headers `
        -ContentType 'application/json; charset=utf-8' `
        -Body ([Text.Encoding]::UTF8.GetBytes($json)) -UseBasicParsing | Out-Null
} catch {
    Write-Output ('Steward runner: posting the result failed (Steward reads it from Datto instead): ' + $_.Exception.Message)
}
exit 0
