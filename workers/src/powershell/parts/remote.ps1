$StewardLines = @()
try {
    $StewardTarget = [string]([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json).server
    if ([string]::IsNullOrWhiteSpace($StewardTarget)) { throw 'The payload names no server to reach by PowerShell remoting.' }
    $StewardLines = @(Invoke-Command -ComputerName $StewardTarget -ScriptBlock $StewardOp -ArgumentList $StewardPayload)
} catch {
    $StewardCategory = 'error'
    if ($_.Exception.GetType().Name -eq 'PSRemotingTransportException') { $StewardCategory = 'winrm_unreachable' }
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = $StewardCategory })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
