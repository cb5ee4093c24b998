$devices = @(Get-MobileDevice -Mailbox ([string]$p.identity))
$removed = New-Object System.Collections.ArrayList
$StewardPrior = [ordered]@{ removed = $removed }
foreach ($device in $devices) {
    Remove-MobileDevice -Identity ([string]$device.Identity) -Confirm:$false
    $null = $removed.Add([ordered]@{ identity = [string]$device.Identity; friendly_name = [string]$device.FriendlyName; device_model = [string]$device.DeviceModel })
}
$status = 'unchanged'
if ($removed.Count -gt 0) { $status = 'changed' }
return (Out-StewardResult -Status $status -Result ([ordered]@{ removed = $removed }) -Prior $StewardPrior)
