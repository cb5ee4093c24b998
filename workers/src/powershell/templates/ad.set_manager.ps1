$user = Get-StewardAdUser -Identity ([string]$p.identity)
$managerDn = $null
if (Test-StewardValue 'manager') { $managerDn = [string](Get-StewardAdUser -Identity ([string]$p.manager)).DistinguishedName }
$previous = $null
if ($null -ne $user.Manager -and [string]$user.Manager -ne '') { $previous = [string]$user.Manager }
$StewardPrior = [ordered]@{ manager = $previous }
if ($previous -eq $managerDn) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user) -Prior $StewardPrior)
}
if ($null -eq $managerDn) {
    Set-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) -Clear 'manager' -Confirm:$false
} else {
    Set-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) -Manager $managerDn -Confirm:$false
}
$after = Get-StewardAdUser -Identity ([string]$user.DistinguishedName)
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $after) -Prior $StewardPrior)
